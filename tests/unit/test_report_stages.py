"""The report of staged runs (run.yaml `stages:`), on hand-made run directories written the way the trainer
writes them: metrics rows tagged with their stage, steps and epochs counted on across stages, checkpoints
numbered across stages, stages.json recorded through tunelab.train.stages.record_stage once a stage completes.
Checked: stage labels beside every checkpoint a staged run names, the Stages table, stage starts and per-stage
epoch ends in the loss curves; an unstaged sweep renders none of it."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from statsmodels.stats.proportion import proportion_confint

from tunelab.fsutil import atomic_write_json
from tunelab.report.build import build_report
from tunelab.report.data import gather
from tunelab.report.figures import _new, epoch_ticks, loss_axis, stage_changes
from tunelab.report.findings import analyze
from tunelab.rundir.checkpoints import Counters
from tunelab.rundir.stages import read_stage_records
from tunelab.rundir.summary import Summary
from tunelab.scaffold.write import scaffold
from tunelab.stats.intervals import task_intervals
from tunelab.stats.records import SampleValue
from tunelab.train.context import StageContext
from tunelab.train.stages import record_stage

STAGES = [{"name": "easy", "dataset": "easy", "epochs": 1},
          {"name": "hard", "dataset": "hard", "optimizer": "carried", "epochs": 2, "learning_rate": 0.001}]


@pytest.fixture(autouse=True)
def _own_history(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))


def _plan(write_spec, factors):
    caps = yaml.safe_load(write_spec().read_text())["datasets"][0]
    spec = write_spec(datasets=[{**caps, "name": "easy"}, {**caps, "name": "hard"}], stages=STAGES,
                      factors={"lora_rank": [4], **factors}, training={"epochs": 1})
    return scaffold(spec)


def _scores(run_dir, epoch, right, kind="finetune", label=None):
    """eval/<label>/exact_match/scores.json as the evaluator writes it: `right` of 40 samples correct."""
    per_sample = [SampleValue(id=i, value=float(i < right)) for i in range(40)]
    metrics = {"accuracy": right / 40}
    label = label or f"epoch_{epoch}"
    atomic_write_json(run_dir / "eval" / label / "exact_match" / "scores.json", {
        "run": run_dir.name, "kind": kind, "label": label, "epoch": epoch, "task": "exact_match",
        "builtin": "exact_match", "dataset": "hard", "split": "test", "metrics": metrics, "primary_metric": "accuracy",
        "score": right / 40, "greater_is_better": True, "samples": 40, "log": "x.eval", "model_path": "/m",
        "duration_s": 1.0, "evaluated_at": "2026-01-02T10:06:00+00:00",
        "per_sample": [p.model_dump() for p in per_sample],
        "intervals": {m: iv.model_dump() for m, iv in task_intervals(per_sample, metrics).items()}})


def _ci(right):
    lo, hi = proportion_confint(right, 40, method="wilson")
    return f"{100 * right / 40:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]"


def _checkpoint(run_dir, epoch, empty=False):
    d = run_dir / "checkpoints" / f"epoch_{epoch}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "adapter_model.safetensors").write_bytes(b"" if empty else b"x" * 4096)
    (d / "adapter_config.json").write_text('{"r": 4}')
    (d / "tokenizer.json").write_text("{}")


def train_like(cfg, stages, state="completed", partial=None, empty=None):
    """A staged run's files: `stages` = (steps, epochs) of each completed stage; `partial` = (steps, epochs
    published) of the stage a failure stopped; loss falls 0.02 per step from 2.0."""
    run_dir = cfg.run_dir
    rows, step, epoch, done = [], 0, 0, []
    for i, (n_steps, n_epochs) in enumerate(stages + ([partial] if partial else [])):
        name, per_epoch = cfg.stages[i].name, n_steps / max(n_epochs, 1)
        ctx = StageContext(name=name, index=i, optimizer=cfg.stages[i].optimizer, count=len(cfg.stages),
                           step_offset=step, epoch_offset=epoch)
        for k in range(1, n_steps + 1):
            rows.append({"step": step + k, "epoch": epoch + k / per_epoch, "loss": 2.0 - 0.02 * (step + k),
                         "val_loss": None, "stage": name})
        for e in range(n_epochs):
            _checkpoint(run_dir, epoch + e, empty=empty == epoch + e)
        step, epoch = step + n_steps, epoch + n_epochs
        if i < len(stages):  # complete: recorded, as the trainer records it
            done = record_stage(run_dir, done, ctx, cfg.stage_config(i),
                                Summary(steps=step, train_examples=80, stage_final_loss=rows[-1]["loss"],
                                        stage_duration_s=5.0), Counters(tokens=1))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    atomic_write_json(run_dir / "status.json", {
        "run": cfg.name, "state": state, "attempt": 1, "started_at": "2026-01-02T10:00:00+00:00",
        "finished_at": "2026-01-02T10:05:00+00:00", "pid": 1, "host": "elsewhere", "step": step,
        "error": None if state == "completed" else "RuntimeError: killed in stage hard"})
    if state == "completed":
        atomic_write_json(run_dir / "summary.json", {
            "run": cfg.name, "state": "completed", "steps": step, "final_loss": rows[-1]["loss"], "epochs": epoch,
            "tokens_per_s": 1000.0, "peak_memory_gib": 0.5, "memory_kind": "host_max_rss", "duration_s": 10.0,
            "stages": [r.without_counters() for r in read_stage_records(run_dir)]})
    return run_dir


def test_staged_sweep_report_names_stage_checkpoints_and_shows_scores_after_each_stage(write_spec):
    plan = _plan(write_spec, {"hard.order": ["shuffled", "by_length"]})
    done, failed = plan.finetune_runs
    assert [s.name for s in done.stages] == ["easy", "hard"] and done.eval.epochs == "stages"
    train_like(done, [(10, 1), (10, 2)])  # easy: 10 steps per epoch; hard: 5
    _scores(done.run_dir, 0, 20)
    _scores(done.run_dir, 2, 32)
    train_like(failed, [(10, 1)], state="failed", partial=(5, 1), empty=1)  # killed in hard, its epoch_1 broken
    _scores(failed.run_dir, 0, 18)
    _scores(plan.controls[0].run_dir, None, 4, kind="control", label="base")

    data = gather(plan.experiment_dir)
    run = next(r for r in data.runs if r.name == done.name)
    assert run.epoch_stage == {0: "easy/epoch_0", 1: "hard/epoch_0", 2: "hard/epoch_1"}
    assert run.planned_epochs == 3 and run.stage_starts() == [(0, "easy"), (10, "hard")]
    bad = next(r for r in data.runs if r.name == failed.name)
    assert bad.stage_starts() == [(0, "easy"), (10, "hard")]  # hard begun (steps past 10), not recorded
    assert ("epoch_1 (hard/epoch_0): adapter_model.safetensors is empty (0 bytes)"
            in {i.detail for i in analyze(data).issues if i.run == failed.name})

    md = build_report(plan.experiment_dir).markdown.read_text()
    # the Stages table: planned fields from run.yaml, completed stages from stages.json, score after each stage
    assert ("| Run | Stage | Dataset | Optimizer | Order | LR | Epochs | Steps | Final loss | exact_match (accuracy) "
            "after the stage |") in md
    assert (f"| {done.name} | 1. easy | easy | fresh | shuffled | 0.002 | 1 (epoch_0) | 1–10 | 1.8 | {_ci(20)} |"
            in md)
    assert (f"| {done.name} | 2. hard | hard | carried | shuffled | 0.001 | 2 (epoch_1–epoch_2) | 11–20 | 1.6 | "
            f"{_ci(32)} |" in md)
    assert f"| {failed.name} | 2. hard | hard | carried | by_length | 0.001 | 2 planned | failed | — | — |" in md
    # every checkpoint named with its stage, the global epoch kept where the table is about epochs
    assert "| Run | epoch_0 (easy/epoch_0) | epoch_2 (hard/epoch_1) |" in md
    assert f"| {done.name} | {_ci(20)} | {_ci(32)} |" in md and f"| {failed.name} | {_ci(18)} | — |" in md
    assert f"| {done.name} | fine-tuned | epoch_2 (hard/epoch_1) | {_ci(32)} |" in md
    assert "checkpoint epoch_2 (hard/epoch_1) (40 samples" in md  # the headline
    assert "| Run | Epoch 0 (easy/epoch_0) | Epoch 1 (hard/epoch_0) | Epoch 2 (hard/epoch_1) | Notes |" in md
    assert f"| {done.name} | ✓ 4.0 KiB | ✓ 4.0 KiB | ✓ 4.0 KiB | complete |" in md
    html = (plan.experiment_dir / "report" / "report.html").read_text()
    assert "<h2>Stages</h2>" in html and "epoch_2 (hard/epoch_1)" in html and "2 (epoch_1–epoch_2)" in html

    ticks = epoch_ticks(data, [0, 2])
    assert ticks == ["0\neasy/epoch_0", "2\nhard/epoch_1"] and stage_changes(data, [0, 2]) == [(0.5, "hard")]


def test_loss_curves_mark_stage_starts_and_each_stage_s_own_epoch_ends(write_spec):
    plan = _plan(write_spec, {"hard.order": ["shuffled"]})
    cfg = plan.finetune_runs[0]
    train_like(cfg, [(10, 1), (10, 2)])  # a single steps-per-epoch (20 / 3) would put epoch ends elsewhere
    run = gather(plan.experiment_dir).runs[0]
    ax = _new(4, 3).subplots()
    loss_axis(ax, run)
    starts = {ln.get_gid(): list(ln.get_xdata()) for ln in ax.get_lines() if (ln.get_gid() or "").startswith("stage:")}
    assert starts == {"stage:easy": [0, 0], "stage:hard": [10, 10]}
    assert [t.get_text() for t in ax.texts] == ["easy", "hard"]
    ends = sorted(ln.get_xdata()[0] for ln in ax.get_lines() if ln.get_linestyle() == ":")
    assert ends == [10, 15, 20]
    md = build_report(plan.experiment_dir).markdown.read_text()
    assert "`metrics.jsonl`; a staged run's stages (named at their first step" in md


def test_swept_stage_epochs_label_each_run_s_checkpoints_in_its_cells(write_spec):
    """easy.epochs swept 1 vs 2: epoch_1 is hard/epoch_0 in one run and easy/epoch_1 in the other, so the
    label moves from the header into each run's cell; a missing checkpoint is named with its stage."""
    plan = _plan(write_spec, {"easy.epochs": [1, 2]})
    one, two = sorted(plan.finetune_runs, key=lambda c: c.stages[0].training.epochs)
    train_like(one, [(10, 1), (10, 2)])
    train_like(two, [(20, 2), (10, 2)])
    (two.run_dir / "checkpoints" / "epoch_3" / "adapter_model.safetensors").unlink()
    data = gather(plan.experiment_dir)
    assert data.shared_stage(0) == "easy/epoch_0" and data.shared_stage(1) is None
    md = build_report(plan.experiment_dir).markdown.read_text()
    assert "| Run | Epoch 0 (easy/epoch_0) | Epoch 1 | Epoch 2 | Epoch 3 | Notes |" in md
    assert f"| {one.name} | ✓ 4.0 KiB | ✓ 4.0 KiB (hard/epoch_0) | ✓ 4.0 KiB (hard/epoch_1) | ✗ missing |" in md
    assert f"| {two.name} | ✓ 4.0 KiB | ✓ 4.0 KiB (easy/epoch_1) | ✓ 4.0 KiB (hard/epoch_0) | ✗ " in md
    assert "epoch_3 (hard/epoch_1): adapter_model.safetensors missing" in md
    assert "no checkpoint for epoch(s) 3 (hard/epoch_1)" not in md  # the directory is there, its file is not


def test_unstaged_sweep_has_no_stage_labels_section_or_marks(write_spec):
    spec = write_spec(factors={"lora_rank": [4]}, training={"epochs": 3})
    cfg = scaffold(spec).finetune_runs[0]
    rows = [{"step": s, "epoch": s / 10, "loss": 2.0 - 0.02 * s, "val_loss": None} for s in range(1, 31)]
    (cfg.run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for e in range(3):
        _checkpoint(cfg.run_dir, e)
    atomic_write_json(cfg.run_dir / "status.json", {"run": cfg.name, "state": "completed", "step": 30})
    atomic_write_json(cfg.run_dir / "summary.json", {"run": cfg.name, "state": "completed", "steps": 30})
    _scores(cfg.run_dir, 0, 10)
    _scores(cfg.run_dir, 2, 30)
    data = gather(spec.parent)
    run = data.runs[0]
    assert run.epoch_stage == {} and run.stage_starts() == [] and run.checkpoint_name(2, "epoch_2") == "epoch_2"
    assert epoch_ticks(data, [0, 2]) == ["0", "2"] and stage_changes(data, [0, 2]) == []
    ax = _new(4, 3).subplots()
    loss_axis(ax, run)
    assert not ax.texts and not any(ln.get_gid() for ln in ax.get_lines())
    assert sorted(ln.get_xdata()[0] for ln in ax.get_lines() if ln.get_linestyle() == ":") == [10, 20, 30]
    md = build_report(spec.parent).markdown.read_text().replace(str(spec.parent), "<exp>")
    assert "## Stages" not in md and not re.search(r"\w/epoch_\d", md) and "stage" not in md.lower()
    assert "| Run | epoch_0 | epoch_2 |" in md and "| Run | Epoch 0 | Epoch 1 | Epoch 2 | Notes |" in md
    assert f"| {cfg.name} | fine-tuned | epoch_2 | {_ci(30)} |" in md
    assert "per evaluated epoch, [95 % interval]." in md


def test_results_json_csv_and_export_records_name_each_checkpoint_s_stage_as_the_report(write_spec):
    """results --json, --csv and the export records carry each evaluated checkpoint's stage and whether the stage
    ends on it: from stages.json for completed stages, as planned for the stage a failure stopped."""
    import csv
    import io

    from typer.testing import CliRunner

    from tunelab.cli import app
    from tunelab.export.records import sweep_record

    plan = _plan(write_spec, {"hard.order": ["shuffled", "by_length"]})
    done, failed = plan.finetune_runs
    train_like(done, [(10, 1), (10, 2)])
    train_like(failed, [(10, 1)], state="failed", partial=(5, 1))  # killed in hard: its epoch_1 not recorded
    for run_dir, epochs in ((done.run_dir, (0, 1, 2)), (failed.run_dir, (0, 1))):
        for epoch in epochs:
            _scores(run_dir, epoch, 10 + epoch)
    _scores(plan.controls[0].run_dir, None, 4, kind="control", label="base")
    runner = CliRunner()
    res = runner.invoke(app, ["results", str(plan.experiment_dir), "--json"])
    assert res.exit_code == 0, res.output
    got = {r["name"]: [(e["label"], e["stage"], e["stage_epoch"], e["ends_stage"]) for e in r["eval"]]
           for r in json.loads(res.stdout)["runs"]}
    assert got == {done.name: [("epoch_0", "easy", 0, True), ("epoch_1", "hard", 0, False),
                               ("epoch_2", "hard", 1, True)],
                   failed.name: [("epoch_0", "easy", 0, True), ("epoch_1", "hard", 0, False)],
                   plan.controls[0].name: [("base", None, None, None)]}
    report = {r.name: r for r in gather(plan.experiment_dir).runs}
    for name in (done.name, failed.name):  # the report's labels, checkpoint by checkpoint
        assert {int(label[6:]): f"{stage}/epoch_{k}" for label, stage, k, _ in got[name]} == {
            e: report[name].epoch_stage[e] for e in range(len(got[name]))}
    res = runner.invoke(app, ["results", str(plan.experiment_dir), "--csv"])
    rows = {r["name"]: r["checkpoint_stages"] for r in csv.DictReader(io.StringIO(res.stdout))}
    assert rows[done.name] == "epoch_0=easy/epoch_0(end);epoch_1=hard/epoch_0;epoch_2=hard/epoch_1(end)"
    assert rows[plan.controls[0].name] == ""
    records = {r.name: r for r in sweep_record(plan.experiment_dir).runs}
    params = records[done.name].params
    assert (params["checkpoint_stages.epoch_1.stage"], params["checkpoint_stages.epoch_1.ends_stage"]) == (
        "hard", "False")
    assert records[done.name].config["checkpoint_stages"]["epoch_2"] == {"stage": "hard", "stage_epoch": 1,
                                                                          "ends_stage": True}
    assert not any(k.startswith("checkpoint_stages") for k in records[plan.controls[0].name].params)
