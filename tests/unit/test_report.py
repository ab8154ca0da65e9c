"""The report: findings and next-step rules on hand-made run directories (files written the way
training and evaluation write them), and the Markdown + self-contained HTML it renders."""

from __future__ import annotations

import csv
import io
import json
import math
import re

import pytest
import yaml
from scipy import stats
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import proportion_confint, proportion_effectsize

from tunelab.fsutil import atomic_write_json
from tunelab.ledger import store as ledger
from tunelab.report.build import build_report
from tunelab.report.data import Point, gather
from tunelab.report.findings import analyze, error_class, overfitting, still_falling
from tunelab.scaffold.write import scaffold
from tunelab.stats.intervals import task_intervals
from tunelab.stats.records import SampleValue

STEPS_PER_EPOCH = 10


def _pts(values, every=1, per_epoch=STEPS_PER_EPOCH):
    return [Point(every * (i + 1), every * (i + 1) / per_epoch, v) for i, v in enumerate(values)]


# ---------------------------------------------------------------- pure rules on curves
def test_overfitting_needs_val_rising_while_train_falls():
    train = _pts([2.0, 1.5, 1.0, 0.8, 0.6, 0.4], every=5)
    val_rising = _pts([1.8, 1.2, 1.1, 1.2, 1.3, 1.4], every=5)
    o = overfitting(train, val_rising)
    assert o is not None and o.best_step == 15 and o.final_val == 1.4 and o.rise == pytest.approx(1.4 / 1.1 - 1)
    assert o.train_to < o.train_from
    assert overfitting(train, _pts([1.8, 1.2, 1.0, 0.9, 0.85, 0.8], every=5)) is None  # val keeps falling
    flat_train = _pts([2.0, 1.0, 0.5, 0.5, 0.5, 0.6], every=5)
    assert overfitting(flat_train, val_rising) is None  # train not falling at the end: not overfitting
    assert overfitting(train, _pts([1.0], every=30)) is None  # one val point: cannot tell


def test_still_falling_compares_last_epoch_end_to_previous_epoch_end():
    # 3 epochs of 10 steps; val every 5 steps
    val = _pts([2.0, 1.5, 1.2, 1.0, 0.9, 0.8], every=5)
    s = still_falling(val)
    assert s is not None and s.prev_step == 20 and s.final_step == 30 and s.drop == pytest.approx(0.2)
    plateau = _pts([2.0, 1.5, 1.2, 1.0, 1.0, 0.998], every=5)
    assert still_falling(plateau) is None  # < 1 % drop over the last epoch
    assert still_falling(_pts([1.0])) is None


def test_error_class():
    assert error_class("OutOfMemoryError: CUDA out of memory") == "OutOfMemoryError"
    assert error_class("killed by the node") == "error"
    assert error_class(None) == "—"


# ---------------------------------------------------------------- hand-made experiments
def _metrics(run_dir, losses, val_losses, epochs, memory_kind="host_max_rss", peak=0.5, nan_at=None):
    """metrics.jsonl as training writes it: one row per log (loss) and per validation (val_loss)."""
    steps = epochs * STEPS_PER_EPOCH
    rows = []
    for i, loss in enumerate(losses):
        step = round((i + 1) * steps / len(losses))
        rows.append({"step": step, "epoch": step / STEPS_PER_EPOCH, "loss": loss, "val_loss": None, "lr": 1e-3,
                     "tokens": 800 * step, "nonpad_tokens": 700 * step, "tokens_per_s": 1000.0,
                     "train_time_s": step / 10, "peak_memory_gib": peak, "memory_kind": memory_kind,
                     "elapsed_s": step / 9})
    for i, v in enumerate(val_losses):
        step = round((i + 1) * steps / len(val_losses))
        rows.append({"step": step, "epoch": step / STEPS_PER_EPOCH, "loss": None, "val_loss": v, "lr": None,
                     "tokens": 800 * step, "nonpad_tokens": 700 * step, "tokens_per_s": None,
                     "train_time_s": step / 10, "peak_memory_gib": peak, "memory_kind": memory_kind,
                     "elapsed_s": step / 9})
    if nan_at is not None:
        rows[nan_at]["loss"] = math.nan
    rows.sort(key=lambda r: (r["step"], r["val_loss"] is not None))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _checkpoints(run_dir, epochs, empty=None):
    for e in epochs:
        d = run_dir / "checkpoints" / f"epoch_{e}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "adapter_model.safetensors").write_bytes(b"" if empty == e else b"x" * 4096)
        (d / "adapter_config.json").write_text('{"r": 4}')
        (d / "tokenizer.json").write_text("{}")


def _scores(run_dir, label, epoch, score, kind="finetune", task="exact_match", metrics=None, primary="accuracy",
            correct=None):
    """eval/<label>/<task>/scores.json as the evaluator writes it; an accuracy task keeps its per-sample scores
    (`correct`, or the first round(score * 40) of 40 samples right) and their intervals."""
    metrics = metrics or {primary: score, "stderr": 0.05}
    per_sample = []
    if primary == "accuracy" and score is not None:
        correct = correct if correct is not None else [1] * round(40 * score) + [0] * (40 - round(40 * score))
        assert sum(correct) / len(correct) == pytest.approx(score)
        per_sample = [SampleValue(id=i, value=float(c)) for i, c in enumerate(correct)]
    atomic_write_json(run_dir / "eval" / label / task / "scores.json", {
        "run": run_dir.name, "kind": kind, "label": label, "epoch": epoch, "task": task, "builtin": task,
        "dataset": "caps", "split": "test", "metrics": metrics, "primary_metric": primary, "score": metrics[primary],
        "greater_is_better": primary not in ("mae", "rmse", "brier", "ece"), "samples": len(per_sample) or 40,
        "log": "x.eval", "model_path": "/m", "duration_s": 1.0, "evaluated_at": "2026-01-02T10:06:00+00:00",
        "per_sample": [p.model_dump() for p in per_sample],
        "intervals": {m: iv.model_dump() for m, iv in task_intervals(per_sample, metrics).items()}})


def fake_run(exp, name, *, state="completed", epochs=3, losses=(2.0, 1.2, 0.8, 0.5, 0.3, 0.2),
             val=(1.5, 1.0, 0.7), score=None, saved=None, error=None, summary=None, nan_at=None, empty=None,
             memory_kind="host_max_rss", peak=0.5, correct=None):
    run_dir = exp / "runs" / name
    _metrics(run_dir, list(losses), list(val), epochs, memory_kind, peak, nan_at)
    _checkpoints(run_dir, range(epochs) if saved is None else saved, empty)
    status = {"run": name, "state": state, "attempt": 1, "started_at": "2026-01-02T10:00:00+00:00",
              "first_started_at": "2026-01-02T10:00:00+00:00", "finished_at": "2026-01-02T10:05:00+00:00",
              "pid": 1, "host": "elsewhere", "error": error, "step": epochs * STEPS_PER_EPOCH}
    atomic_write_json(run_dir / "status.json", status)
    if state == "completed":
        finite = [v for v in losses if not math.isnan(v)]
        atomic_write_json(run_dir / "summary.json", {
            "run": name, "state": "completed", "steps": epochs * STEPS_PER_EPOCH, "final_loss": losses[-1],
            "best_loss": min(finite), "final_val_loss": val[-1] if val else None,
            "best_val_loss": min(val) if val else None, "tokens_per_s": 1234.5, "nonpad_fraction": 0.875,
            "peak_memory_gib": peak, "memory_kind": memory_kind, "duration_s": 300.0, "train_time_s": 280.0,
            "overhead_s": 20.0, "epochs": epochs,
            "packing": {"packed": False}, "device": "cpu", **(summary or {})})
    if score is not None:
        _scores(run_dir, f"epoch_{epochs - 1}", epochs - 1, score, correct=correct)
    return run_dir


@pytest.fixture(autouse=True)
def _own_history(tmp_path, monkeypatch):
    """Hand-made runs are ingested into the user-level history too: keep them out of other tests' plans."""
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))


@pytest.fixture
def exp(write_spec):
    spec = write_spec(factors={"lora_rank": [4, 16]}, training={"epochs": 3},
                      description="Does rank matter?")
    scaffold(spec)
    return spec.parent


def _control(exp, score=0.05):
    _scores(exp / "controls" / "tiny_base", "base", None, score, kind="control")


def test_complete_sweep_findings_best_run_and_score_jump(exp):
    fake_run(exp, "tiny_r4", score=0.30)
    fake_run(exp, "tiny_r16", score=0.80)
    _control(exp)
    data = gather(exp)
    f = analyze(data)
    assert not data.partial
    assert [r.name for r in f.best] == ["tiny_r16"] and f.best_score == 0.80
    assert f.runner_up.name == "tiny_r4"
    eff = next(e for e in f.effects if e.factor == "lora_rank" and e.metric == "score")
    assert [(s.level, s.mean) for s in eff.levels] == [(4, 0.30), (16, 0.80)]
    assert eff.spread == pytest.approx(0.5) and eff.best.level == 16
    assert [(j.low, j.high, j.suggest) for j in f.jumps] == [(4, 16, [8])]
    assert any("intermediate lora_rank values 8" in s for s in f.next_steps)
    # val 1.5 → 1.0 → 0.7 at epoch ends, one validation an epoch: falling, but its noise is unknown, so
    # validate more often before training longer
    assert set(f.still_falling) == {"tiny_r4", "tiny_r16"}
    assert not any(s.beyond_noise for s in f.still_falling.values())
    assert any(s.startswith(f"Validate at least 3 times an epoch (`training.validation_every_steps` ≤ "
                            f"{STEPS_PER_EPOCH // 3}) before training longer (e.g. 6 instead of 3)")
               for s in f.next_steps)
    assert not f.overfit and not f.issues


def test_ties_are_named(exp):
    fake_run(exp, "tiny_r4", score=0.5)
    fake_run(exp, "tiny_r16", score=0.5)
    _control(exp)
    f = analyze(gather(exp))
    assert [r.name for r in f.best] == ["tiny_r4", "tiny_r16"] and f.runner_up.name == "tiny_r16"
    assert not f.best_vs["tiny_r16"].resolved
    md = build_report(exp).markdown.read_text()
    assert "**Best runs (2 tied):** tiny_r4 at 50.0 % [" in md and "tied within noise" in md


def _pattern(right: set[int], n: int = 40) -> list[int]:
    return [int(i in right) for i in range(n)]


def test_best_and_tied_are_decided_by_the_paired_interval_not_by_equal_numbers(exp):
    """57.5 % vs 50.0 % on the same 40 samples: 3 samples only r4 gets right; the paired (exact McNemar)
    interval of the 7.5 pp difference includes zero, so the runs are tied; 80 % vs 50 % is a win."""
    base = set(range(20))
    fake_run(exp, "tiny_r4", score=23 / 40, correct=_pattern(base | {20, 21, 22}))
    fake_run(exp, "tiny_r16", score=0.5, correct=_pattern(base))
    _control(exp)
    f = analyze(gather(exp))
    d = f.best_vs["tiny_r16"]
    ci = stats.binomtest(3, 3).proportion_ci(method="exact")  # 3 discordant samples, all right in r4 only
    assert (d.low, d.high) == (pytest.approx(3 / 40 * (2 * ci.low - 1)), pytest.approx(3 / 40 * (2 * ci.high - 1)))
    assert d.estimate == pytest.approx(0.075) and d.low <= 0 < d.high and not d.resolved
    assert [r.name for r in f.best] == ["tiny_r4", "tiny_r16"]
    step = next(s for s in f.next_steps if s.startswith("Best run undecided"))
    assert "tiny_r4 − tiny_r16: no detectable difference (+7.5 pp [" in step
    need = math.ceil(NormalIndPower().solve_power(effect_size=proportion_effectsize(0.575, 0.5), alpha=0.05, power=0.8))
    assert f"evaluate on ≈{need} test samples (now 40)" in step and "seed replicates" in step
    effect = next(e for e in f.effects if e.metric == "score")
    assert effect.diff is not None and not effect.diff.resolved
    assert any(s.startswith("The choice of lora_rank hinges on a difference") for s in f.next_steps)
    md = build_report(exp).markdown.read_text()
    assert "**Best runs (tied within noise): tiny_r4, tiny_r16 — 57.5 % [" in md
    assert "No detectable difference between levels (4 − 16: +7.5 pp [" in md

    fake_run(exp, "tiny_r4", score=0.8, correct=_pattern(base | set(range(20, 32))))
    f = analyze(gather(exp))
    assert [r.name for r in f.best] == ["tiny_r4"] and f.best_vs["tiny_r16"].resolved
    assert f.best_vs["tiny_r16"].low > 0 and not any("undecided" in s or "hinges" in s for s in f.next_steps)


def test_failed_and_retried_run_is_reported_with_class_and_reason(exp):
    fake_run(exp, "tiny_r4", score=0.4)
    fake_run(exp, "tiny_r16", state="failed", error="OutOfMemoryError: CUDA out of memory", saved=[0],
             losses=(2.0, 1.5), val=(1.6,))
    for attempt, code in ((1, 1), (2, 1)):
        ledger.record_attempt(exp, run="tiny_r16", attempt=attempt, executor="local", job_id="1",
                              started_at="2026-01-02T10:00:00+00:00", finished_at="2026-01-02T10:01:00+00:00",
                              exit_code=code, state="failed", reason="OutOfMemoryError: CUDA out of memory")
    _control(exp)
    data = gather(exp)
    f = analyze(data)
    assert data.partial
    kinds = {(i.run, i.kind) for i in f.issues}
    assert {("tiny_r16", "failed"), ("tiny_r16", "retried")} <= kinds
    failed = next(i for i in f.issues if i.kind == "failed")
    assert "OutOfMemoryError" in failed.detail and "CUDA out of memory" in failed.detail
    retried = next(i for i in f.issues if i.kind == "retried")  # the verdicts read back typed, shown as stored
    assert retried.detail.endswith(": #1 failed (exit 1), #2 failed (exit 1)"), retried.detail
    assert any("tunelab run" in s and "--run tiny_r16" in s for s in f.next_steps)
    md = build_report(exp).markdown.read_text()
    assert "⚠ partial — 1 of 2 fine-tuned runs completed, 1 failed or interrupted (tiny_r16)" in md
    assert "1 retried (tiny_r16)" in md


def test_missing_epoch_nan_loss_and_empty_checkpoint_file_are_flagged(exp):
    fake_run(exp, "tiny_r4", saved=[0, 2], score=0.4)  # epoch_1 never saved
    fake_run(exp, "tiny_r16", nan_at=3, empty=1, score=0.5)
    _control(exp)
    f = analyze(gather(exp))
    by = {(i.run, i.kind): i.detail for i in f.issues}
    assert by[("tiny_r4", "missing-epoch")] == "no checkpoint for epoch(s) 1"
    assert "step(s) 20" in by[("tiny_r16", "nan-loss")]
    assert "adapter_model.safetensors is empty (0 bytes)" in by[("tiny_r16", "empty-file")]
    md = build_report(exp).markdown.read_text()
    row = next(line for line in md.splitlines() if line.startswith("| tiny_r4 | ✓"))
    assert "✗ missing" in row and row.endswith("problems |")
    assert "✗ adapter_model.safetensors is empty (0 bytes)" in md


def test_rising_val_loss_is_overfitting_and_not_still_falling(exp):
    fake_run(exp, "tiny_r4", losses=(2.0, 1.2, 0.8, 0.5, 0.3, 0.2), val=(1.0, 0.8, 0.7, 0.8, 0.9, 1.1), score=0.3)
    fake_run(exp, "tiny_r16", score=0.35)
    _control(exp)
    f = analyze(gather(exp))
    assert set(f.overfit) == {"tiny_r4"} and "tiny_r4" not in f.still_falling
    assert any(s.startswith("Use an earlier checkpoint or fewer epochs for tiny_r4") for s in f.next_steps)
    assert not f.jumps  # 5 pp between ranks: below the jump threshold


def test_gpu_memory_rules(exp):
    fake_run(exp, "tiny_r4", memory_kind="cuda_max_allocated", peak=10.0, summary={"gpu_memory_total_gib": 80.0},
             score=0.5)
    fake_run(exp, "tiny_r16", memory_kind="cuda_max_allocated", peak=70.0, summary={"gpu_memory_total_gib": 80.0},
             score=0.5)
    f = analyze(gather(exp))
    fr = {m.run: m.fraction for m in f.memory}
    assert fr == {"tiny_r4": 0.125, "tiny_r16": 0.875}
    assert any(s.startswith("Raise the micro-batch") and "tiny_r4" in s for s in f.next_steps)


def test_gpu_memory_cannot_be_judged_on_cpu_or_without_total(exp):
    fake_run(exp, "tiny_r4", score=0.5)
    fake_run(exp, "tiny_r16", score=0.5)
    md = build_report(exp).markdown.read_text()
    assert "cannot be judged — these runs trained on CPU" in md
    assert "Raise the micro-batch" not in md
    fake_run(exp, "tiny_r4", memory_kind="cuda_max_allocated", peak=10.0, score=0.5)
    fake_run(exp, "tiny_r16", memory_kind="cuda_max_allocated", peak=10.0, score=0.5)
    md = build_report(exp).markdown.read_text()
    assert "total memory is not recorded" in md


def test_run_that_never_logged(exp):
    run_dir = exp / "runs" / "tiny_r4"
    atomic_write_json(run_dir / "status.json", {"run": "tiny_r4", "state": "failed", "pid": 1, "host": "elsewhere",
                                                "error": "RuntimeError: dataloader died"})
    f = analyze(gather(exp))
    assert ("tiny_r4", "never-logged") in {(i.run, i.kind) for i in f.issues}


def test_report_of_a_fresh_scaffold_is_partial_and_has_no_figures(exp):
    files = build_report(exp)
    md = files.markdown.read_text()
    assert files.partial and "⚠ partial — 0 of 2 fine-tuned runs completed, 2 pending" in md
    assert "No checkpoints yet." in md and "No evaluated run yet" in md
    assert files.figures == []
    assert "tunelab run" in md  # next step: train the pending runs


def test_markdown_and_html_are_complete_and_self_contained(exp):
    fake_run(exp, "tiny_r4", score=0.30)
    fake_run(exp, "tiny_r16", score=0.80)
    _control(exp)
    files = build_report(exp)
    md = files.markdown.read_text()
    html = files.html.read_text()
    sections = ["At a glance", "Overview", "Checkpoint verification", "Training results", "Evaluation",
                "Key findings", "Storage", "Issues", "Next steps", "Appendix: reproduce"]
    for s in sections:
        assert f"## {s}" in md and f"<h2>{s}</h2>" in html.replace("&amp;", "&")
    assert "partial" not in md and "partial" not in html.lower()
    assert "2 of 2 fine-tuned runs completed" in md and "**Dates:** 2026-01-02 10:00:00 UTC" in md
    assert "**Question:** Does rank matter?" in md
    # every score and every stated difference carries its interval
    lo, hi = proportion_confint(2, 40, method="wilson")
    control = f"5.0 % [{100 * lo:.1f}, {100 * hi:.1f}]"
    assert re.search(r"\*\*Best run: tiny_r16 — 80\.0 % \[\d+\.\d, \d+\.\d\]\*\*", md)
    assert re.search(r"\*\*\+75\.0 pp \[\+\d+\.\d, \+\d+\.\d\], McNemar p = [\d.e-]+\*\* over the base-model "
                     rf"control tiny_base \({re.escape(control)}\)", md)
    assert re.search(r"\*\*\+50\.0 pp \[\+\d+\.\d, \+\d+\.\d\], McNemar p = [\d.e-]+\*\* over the runner-up "
                     r"tiny_r4 \(30\.0 % \[", md)
    assert "lora_rank: 16 − 4" not in md.split("## Overview")[0]  # one run per level: no effect at a glance
    assert re.search(r"\*\*lora_rank\*\* on exact_match \(accuracy\): 4 → 30\.0 % \(n=1\); 16 → 80\.0 % \(n=1\)\. "
                     r"Highest at 16: 16 − 4 = \+50\.0 pp \[\+[\d.]+, \+[\d.]+\]", md)
    assert re.search(r"\| tiny_r16 \| fine-tuned \| epoch_2 \| 80\.0 % \[[\d.]+, [\d.]+\] \| \+75\.0 pp \[\+[\d.]+, "
                     r"\+[\d.]+\] \| 40 \|", md)  # one table per task
    assert f"| tiny_base | control | base | {control} | — | 40 |" in md
    assert "tunelab train runs/tiny_r16/run.yaml" in md and f"tunelab eval {exp} --run tiny_r4 --force" in md
    # figures: on disk, linked from Markdown, embedded in HTML; nothing fetched from elsewhere
    names = sorted(p.name for p in files.figures)
    assert names == ["loss_curves.png", "score_by_lora_rank__exact_match__accuracy.png", "throughput_memory.png"]
    for n in names:
        assert (exp / "report" / "figures" / n).stat().st_size > 1000 and f"(figures/{n})" in md
    imgs = re.findall(r'<img src="([^"]+)"', html)
    assert len(imgs) == 3 and all(s.startswith("data:image/png;base64,") for s in imgs)
    assert not re.search(r'(src|href)="(https?:|//|file:)', html) and "<script" not in html
    # best run marked in the tables
    assert '<tr class="best"><td>tiny_r16</td>' in html


def test_report_cli_open_uses_the_webbrowser_module(exp, monkeypatch):
    from typer.testing import CliRunner

    from tunelab.cli import app

    opened = []
    monkeypatch.setattr("webbrowser.open", lambda url, *a, **k: opened.append(url) or False)
    res = CliRunner().invoke(app, ["report", str(exp), "--open"])
    assert res.exit_code == 0, res.output
    assert opened == [(exp / "report" / "report.html").resolve().as_uri()]
    assert "report.html" in res.output and "partial" in res.output


# ---------------------------------------------------------------- several tasks, prompts, eval-only
@pytest.fixture
def multi(write_spec, tmp_path):
    adapter = tmp_path / "shared_adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"x")
    import json

    nums = tmp_path / "nums.json"
    nums.write_text(json.dumps({"test": [{"input": f"{i}+{i}", "output": str(2 * i)} for i in range(5)]}))
    caps = yaml.safe_load(write_spec().read_text())["datasets"][0]
    spec = write_spec(factors={"lora_rank": [4], "prompt": ["Capitalize: {input}", "Upper: {input}"]},
                      training={"epochs": 3},
                      datasets=[caps, {"name": "nums", "path": str(nums), "eval_only": True}],
                      eval={"tasks": ["exact_match", {"name": "num", "builtin": "numeric", "dataset": "nums"}]},
                      eval_only=[{"name": "shared", "path": str(adapter), "model": "tiny"}])
    scaffold(spec)
    exp = spec.parent
    num = {"tiny_p1_r4": 2.0, "tiny_p2_r4": 0.5}  # MAE: lower is better
    for name, acc in (("tiny_p1_r4", 0.6), ("tiny_p2_r4", 0.4)):
        run_dir = fake_run(exp, name, score=acc)
        _scores(run_dir, "epoch_2", 2, None, task="num", primary="mae",
                metrics={"mae": num[name], "rmse": num[name] * 1.5, "r2": 0.1, "parse_rate": 0.9})
    for ctl, acc, mae in (("tiny_p1_base", 0.1, 5.0), ("tiny_p2_base", 0.2, 4.0)):
        _scores(exp / "controls" / ctl, "base", None, acc, kind="control")
        _scores(exp / "controls" / ctl, "base", None, None, kind="control", task="num", primary="mae",
                metrics={"mae": mae, "rmse": mae, "r2": -1.0, "parse_rate": 0.5})
    shared = exp / "eval_only" / "shared"
    _scores(shared, "checkpoint", None, 0.9, kind="eval_only")
    _scores(shared, "checkpoint", None, None, kind="eval_only", task="num", primary="mae",
            metrics={"mae": 1.0, "rmse": 1.0, "r2": 0.5, "parse_rate": 1.0})
    return exp


def test_several_tasks_prompts_and_eval_only(multi):
    data = gather(multi)
    assert data.factors["prompt"] == ["p1", "p2"] and data.prompts["p2"] == "Upper: {input}"
    assert [(t.name, t.primary_metric, t.greater_is_better) for t in data.tasks] == [
        ("exact_match", "accuracy", True), ("num", "mae", False)]
    run = next(r for r in data.runs if r.name == "tiny_p2_r4")
    assert data.control_for(run).name == "tiny_p2_base"  # same prompt
    assert [r.name for r in data.eval_only] == ["shared"] and not data.partial
    f = analyze(data)
    by = {(e.factor, e.task): e for e in f.effects}
    assert by[("prompt", "exact_match")].best.level == "p1"
    assert by[("prompt", "num")].best.level == "p2"  # lower MAE wins
    assert [r.name for r in f.best] == ["tiny_p1_r4"]  # on the headline task (the first)

    files = build_report(multi)
    md = files.markdown.read_text()
    assert "Task **exact_match** (exact_match on caps / test)" in md and "Task **num** (numeric on nums / test)" in md
    assert "| Run | Type | Checkpoint | mae ★ | rmse | r2 | parse_rate | Δ★ vs control | Samples |" in md
    assert "| tiny_p2_r4 | fine-tuned | epoch_2 | 0.5 | 0.75 | 0.1 | 90.0 % | -3.5 | 40 |" in md
    assert "| shared | eval-only | checkpoint | 1 | 1 | 0.5 | 100.0 % | — | 40 |" in md
    assert "| p2 | `Upper: {input}` |" in md
    # scores.json without per-sample scores (written before tunelab kept them): values without intervals
    assert "**prompt** on num (mae): p1 → 2 (n=1); p2 → 0.5 (n=1). Lowest at p2, -1.5 vs p1 (an observation: 1 " \
           "run per level, no seed replicates — no interval (no per-sample scores), and training noise unmeasured)." in md
    names = {p.name for p in files.figures}
    assert {"score_by_prompt__exact_match__accuracy.png", "score_by_prompt__num__mae.png",
            "score_by_prompt__num__parse_rate.png"} <= names
    assert not any("stderr" in n for n in names)


def test_results_json_and_csv_carry_every_task_metric_and_checkpoint(multi):
    from tunelab.ledger.results import collect_results, to_csv

    records = collect_results(multi)
    rows = {r.name: r.to_json() for r in records}  # what `results --json` prints
    r = rows["tiny_p2_r4"]
    assert r["score"] == 0.4 and r["score_task"] == "exact_match" and r["scores"] == {"exact_match": 0.4, "num": 0.5}
    assert [(e["label"], e["task"], e["primary_metric"]) for e in r["eval"]] == [
        ("epoch_2", "exact_match", "accuracy"), ("epoch_2", "num", "mae")]
    assert r["eval"][1]["metrics"] == {"mae": 0.5, "rmse": 0.75, "r2": 0.1, "parse_rate": 0.9}
    assert rows["shared"]["type"] == "eval-only" and rows["shared"]["state"] == "completed"
    lines = to_csv(records).splitlines()
    header = lines[0].split(",")
    assert header[:3] == ["name", "type", "model"] and len(lines) == 1 + len(rows)
    assert {"exact_match.accuracy", "num.mae", "num.parse_rate", "evals"} <= set(header)
    row = next(line for line in lines if line.startswith("tiny_p2_r4,"))
    assert "epoch_2/num/mae=0.5" in row
    # intervals: in JSON per metric, in CSV beside each metric and the headline score
    lo, hi = proportion_confint(16, 40, method="wilson")
    acc = r["eval"][0]["intervals"]["accuracy"]
    assert (acc["low"], acc["high"], acc["method"]) == (pytest.approx(lo), pytest.approx(hi), "wilson")
    assert r["score_ci"] == [pytest.approx(lo), pytest.approx(hi)]
    assert r["eval"][1]["intervals"] == {}  # the num task's scores.json has no per-sample scores
    assert {"score_ci_low", "score_ci_high", "exact_match.accuracy.ci_low", "exact_match.accuracy.ci_high"} <= set(header)
    parsed = next(csv.DictReader(io.StringIO(to_csv([rec for rec in records if rec.name == "tiny_p2_r4"]))))
    assert float(parsed["score_ci_low"]) == pytest.approx(lo) and float(parsed["exact_match.accuracy.ci_high"]) == \
        pytest.approx(hi)
    assert f"epoch_2/exact_match/accuracy=0.4[{lo:.6g},{hi:.6g}]" in parsed["evals"]


# ---------------------------------------------------------------- seeds as replicates
def test_seed_is_replication_and_effects_are_set_against_seed_to_seed_spread(write_spec):
    spec = write_spec(factors={"lora_rank": [4, 16], "seed": [1, 2]}, training={"epochs": 3})
    plan = scaffold(spec)
    exp = spec.parent
    scores = {(4, 1): 0.50, (4, 2): 0.55, (16, 1): 0.80, (16, 2): 0.85}
    for cfg in plan.finetune_runs:
        fake_run(exp, cfg.name, score=scores[(cfg.factors["lora_rank"], cfg.factors["seed"])])
    f = analyze(gather(exp))
    assert [e.factor for e in f.effects if e.metric == "score"] == ["lora_rank"]  # seed is no factor to win
    eff = next(e for e in f.effects if e.metric == "score")
    welch = stats.ttest_ind([0.80, 0.85], [0.50, 0.55], equal_var=False)
    ci = welch.confidence_interval()
    assert eff.diff.estimate == pytest.approx(0.30) and "Welch" in eff.diff.method
    assert (eff.diff.low, eff.diff.high) == (pytest.approx(ci.low), pytest.approx(ci.high)) and eff.diff.resolved
    assert not any("seed" in s and "intermediate" in s for s in f.next_steps)
    files = build_report(exp)
    md = files.markdown.read_text()
    assert {p.name for p in files.figures} >= {"score_by_lora_rank__exact_match__accuracy.png"}
    assert not any("seed" in p.name for p in files.figures)  # no figure of a score against its seed
    assert "## Replicates (seeds)" in md
    mean16 = stats.t.interval(0.95, 1, loc=0.825, scale=stats.sem([0.80, 0.85]))
    assert (f"| model=tiny, lora_rank=16 | 2 | 82.5 % [{100 * mean16[0]:.1f}, {100 * mean16[1]:.1f}] | 3.5 pp | "
            "80.0 % – 85.0 % |") in md
    assert "**Seed-to-seed SD** (pooled over configurations, residual of a one-way model): 3.5 pp." in md
    assert re.search(r"\*\*lora_rank:\*\* 16 − 4 = \+30\.0 pp \[\+\d+\.\d, \+\d+\.\d\].*8\.5× the seed-to-seed SD: the "
                     r"effect exceeds seed-to-seed variation\.", md)


def test_results_table_shows_each_score_with_its_interval(multi):
    from typer.testing import CliRunner

    from tunelab.cli import app

    res = CliRunner().invoke(app, ["results", str(multi)], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    lo, hi = proportion_confint(16, 40, method="wilson")
    row = next(line for line in res.output.splitlines() if "tiny_p2_r4" in line)
    assert f"40.0 % [{100 * lo:.1f}, {100 * hi:.1f}]" in row and "0.5" in row  # num (mae): no per-sample scores


def test_a_probe_recorded_and_a_job_recorded_host_peak_are_labelled_alike(exp):
    # the probe wrote the host peak as cpu_max_rss before the names were one; the job writes host_max_rss
    fake_run(exp, "tiny_r4", memory_kind="cpu_max_rss", score=0.5)
    fake_run(exp, "tiny_r16", memory_kind="host_max_rss", score=0.5)
    md = build_report(exp).markdown.read_text()
    assert "peak memory: host max RSS)" in md
    assert "cpu_max_rss" not in md
    assert "cannot be judged — these runs trained on CPU" in md
