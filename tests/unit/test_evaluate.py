"""Evaluation plumbing that needs no inspect-ai run: targets, epochs, built-in tasks and their samples,
scorers, score files, and what a directory given as `--model tunelab/<dir>` stands for."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from inspect_ai.model import ModelOutput
from inspect_ai.scorer import CORRECT, INCORRECT, Target
from inspect_ai.solver import TaskState
from inspect_ai.util import registry_info

from tunelab.errors import TunelabError
from tunelab.evaluate.runner import evaluate_run
from tunelab.evaluate.scores import read_scores
from tunelab.evaluate.targets import parse_epochs, resolve_model_dir, select_targets
from tunelab.evaluate.tasks import build_builtin_task, exact_match, includes, numeric, parse_number
from tunelab.rundir.config import RunConfig, save_run_config
from tunelab.rundir.experiment import is_evaluated
from tunelab.spec import TaskSpec

WORDS = ["apple", "banana", "cherry"]


def make_cfg(root: Path, kind: str = "finetune", model_path: Path | None = None, **fields) -> RunConfig:
    data = root / "data.json"
    if not data.exists():
        rows = [{"input": w, "output": w.capitalize()} for w in WORDS]
        data.write_text(json.dumps({"train": rows, "validation": rows, "test": rows}))
    nums = root / "nums.jsonl"
    if not nums.exists():
        nums.write_text("".join(json.dumps({"q": f"{a}+{b}", "a": s}) + "\n"
                                for a, b, s in ((1, 2, "3"), (2, 2, "4"), (5, 5, "1,000"))))
    names = {"finetune": "r1", "control": "base_ctl", "eval_only": "shared"}
    return RunConfig(**{
        "name": names[kind], "kind": kind, "experiment": "x", "experiment_dir": str(root),
        "model": {"name": "tiny", "path": str(model_path or root / "no_model")},
        "dataset": {"name": "caps", "path": str(data)},
        "eval_datasets": {"nums": {"name": "nums", "test": str(nums), "output_field": "a", "eval_only": True}},
        "prompt": "Capitalize: {input}", "training": {} if kind == "finetune" else None, **fields})


def fake_checkpoint(run_dir: Path, epoch: int, complete: bool = True) -> Path:
    d = run_dir / "checkpoints" / f"epoch_{epoch}"
    d.mkdir(parents=True)
    (d / "adapter_config.json").write_text("{}")
    (d / "adapter_model.safetensors").write_bytes(b"x" if complete else b"")
    return d


# ---------------------------------------------------------------- targets and epochs
def test_targets_last_all_list_and_incomplete_ignored(tmp_path):
    cfg = make_cfg(tmp_path)
    for e in (0, 1):
        fake_checkpoint(cfg.run_dir, e)
    fake_checkpoint(cfg.run_dir, 2, complete=False)  # still being written: not evaluable
    assert [t.label for t in select_targets(cfg)] == ["epoch_1"]  # eval.epochs defaults to last
    assert [t.epoch for t in select_targets(cfg, "all")] == [0, 1]
    assert select_targets(cfg, [0])[0].adapter_path == cfg.run_dir / "checkpoints" / "epoch_0"
    with pytest.raises(TunelabError, match=r"epoch\(s\) \[2\]; complete: \[0, 1\]"):
        select_targets(cfg, [0, 2])


def test_control_and_eval_only_targets(tmp_path):
    [t] = select_targets(make_cfg(tmp_path, kind="control"), "all")
    assert (t.label, t.epoch, t.adapter_path, t.base_path) == ("base", None, None, tmp_path / "no_model")
    adapter = fake_checkpoint(tmp_path / "elsewhere", 0)
    [t] = select_targets(make_cfg(tmp_path, kind="eval_only", checkpoint=str(adapter)))
    assert (t.label, t.adapter_path, t.base_path) == ("checkpoint", adapter, tmp_path / "no_model")
    full = tmp_path / "full_model"  # a full model is its own base
    full.mkdir()
    [t] = select_targets(make_cfg(tmp_path, kind="eval_only", model_path=full, checkpoint=str(full)))
    assert (t.adapter_path, t.base_path) == (None, full)
    with pytest.raises(TunelabError, match="neither its base model nor a PEFT adapter"):
        select_targets(make_cfg(tmp_path, kind="eval_only", checkpoint=str(tmp_path)))


def test_parse_epochs():
    assert parse_epochs("last") == "last" and parse_epochs("all") == "all" and parse_epochs(None) is None
    assert parse_epochs("2,0, 2") == [0, 2]
    for bad in ("first", "1,x", "-1"):
        with pytest.raises(TunelabError, match="--epochs"):
            parse_epochs(bad)


def test_no_checkpoint_and_missing_base_are_clear_errors(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    cfg = make_cfg(tmp_path, model_path=tmp_path / "model")
    with pytest.raises(TunelabError, match="no complete checkpoint") as err:
        evaluate_run(cfg)
    assert str(cfg.run_dir / "checkpoints") in str(err.value)
    with pytest.raises(TunelabError, match="base model directory not found") as err:
        evaluate_run(make_cfg(tmp_path, kind="control"))
    assert str(tmp_path / "no_model") in str(err.value)


def test_model_dir_given_by_hand(tmp_path):
    moved = tmp_path / "moved"  # run.yaml says another experiment dir: where it sits wins
    cfg = make_cfg(tmp_path)
    cfg.experiment_dir = str(moved)
    save_run_config(cfg)
    for e in (0, 1):
        fake_checkpoint(cfg.run_dir, e)
    got, target = resolve_model_dir(cfg.run_dir)
    assert got.name == "r1" and target.label == "epoch_1" and got.run_dir == cfg.run_dir
    _, target = resolve_model_dir(cfg.run_dir / "checkpoints" / "epoch_0")
    assert (target.label, target.epoch, target.adapter_path) == ("epoch_0", 0, cfg.run_dir / "checkpoints" / "epoch_0")
    ctl = make_cfg(tmp_path, kind="control")
    save_run_config(ctl)
    assert resolve_model_dir(ctl.run_dir)[1].label == "base"
    with pytest.raises(TunelabError, match="not a tunelab run, control or eval-only directory"):
        resolve_model_dir(tmp_path)


# ---------------------------------------------------------------- built-in tasks
def test_builtin_samples_are_the_run_readers_conversations(tmp_path):
    cfg = make_cfg(tmp_path, system_prompt="Be brief.", eval={"limit": 2})
    task = build_builtin_task(cfg, TaskSpec(name="exact_match"))
    got = [([(m.role, m.text) for m in s.input], s.target, s.id) for s in task.dataset]
    assert got == [([("system", "Be brief."), ("user", f"Capitalize: {w}")], w.capitalize(), i)
                   for i, w in enumerate(WORDS[:2])]
    # a task's own prompt, split and limit
    task = build_builtin_task(cfg, TaskSpec(name="inc", builtin="includes", split="validation", prompt="W: {input}",
                                            limit=3))
    assert task.name == "inc" and [s.input[-1].text for s in task.dataset] == [f"W: {w}" for w in WORDS]


def test_choice_options_default_to_the_split_answers_sorted(tmp_path):
    cfg = make_cfg(tmp_path)
    task = build_builtin_task(cfg, TaskSpec(name="pick", builtin="choice"))
    assert task.solver is not None and len(task.dataset) == 3
    metric_names = [registry_info(m).name.split("/")[-1] for m in task.metrics]
    assert metric_names == ["accuracy", "balanced_accuracy", "macro_f1", "ece", "brier"]  # no AUC: 3 classes
    with pytest.raises(TunelabError, match=r"the answer 'Cherry' of test row 2 is not among the options"):
        build_builtin_task(cfg, TaskSpec(name="pick", builtin="choice", options=["Apple", "Banana"]))


def test_numeric_targets_and_datasets_by_name(tmp_path):
    cfg = make_cfg(tmp_path)
    task = build_builtin_task(cfg, TaskSpec(name="sum", builtin="numeric", dataset="nums", prompt="{q}="))
    assert [(s.input[-1].text, s.target) for s in task.dataset] == [("1+2=", "3.0"), ("2+2=", "4.0"),
                                                                   ("5+5=", "1000.0")]
    with pytest.raises(TunelabError, match=r"the answer 'Apple' of test row 0 is not a number"):
        build_builtin_task(cfg, TaskSpec(name="n", builtin="numeric"))
    with pytest.raises(TunelabError, match="dataset 'other' is not one of the spec's datasets"):
        build_builtin_task(cfg, TaskSpec(name="n", builtin="numeric", dataset="other"))


def test_parse_number_takes_the_first_number():
    cases = {"42": 42.0, "about -3.5 apples": -3.5, "1,234.5 and 7": 1234.5, ".5": 0.5, "2e3!": 2000.0,
             "x=+7": 7.0, "none here": None, "": None}
    assert {k: parse_number(k) for k in cases} == cases


def _score(scorer_factory, completion: str, target: str):
    state = TaskState(model="tunelab/x", sample_id=0, epoch=1, input="apple", messages=[],
                      output=ModelOutput.from_content("tunelab/x", completion))
    return asyncio.run(scorer_factory()(state, Target(target)))


def test_exact_match_and_includes_are_case_sensitive():
    assert _score(exact_match, " Apple\n", "Apple").value == CORRECT
    assert _score(exact_match, "apple", "Apple").value == INCORRECT
    assert _score(exact_match, "Apple pie", "Apple").value == INCORRECT
    assert _score(includes, "it is Apple.", "Apple").value == CORRECT
    assert _score(includes, "it is apple.", "Apple").value == INCORRECT


def test_numeric_scorer_records_the_parsed_number():
    s = _score(numeric, "It is 1,000.", "1000.0")
    assert s.value == CORRECT and s.metadata == {"prediction": 1000.0, "target": 1000.0}
    s = _score(numeric, "no idea", "3.0")
    assert s.value == INCORRECT and s.metadata == {"prediction": None, "target": 3.0}


# ---------------------------------------------------------------- score files
def _write_scores(run_dir: Path, label: str, epoch, task: str, **extra) -> None:
    d = run_dir / "eval" / label / task
    d.mkdir(parents=True)
    (d / "scores.json").write_text(json.dumps({
        "run": "r", "kind": "finetune", "label": label, "epoch": epoch, "task": task, "metrics": {"accuracy": 0.5},
        "primary_metric": "accuracy", "score": 0.5, "samples": 2, "log": "x.eval", "model_path": "/m",
        "duration_s": 1.0, "evaluated_at": "2026-01-01T00:00:00+00:00", **extra}))


def test_read_scores_orders_checkpoints_then_tasks_and_skips_truncated(tmp_path):
    for label, epoch in (("epoch_10", 10), ("epoch_2", 2), ("base", None)):
        for task in ("b_task", "a_task"):
            _write_scores(tmp_path, label, epoch, task)
    (tmp_path / "eval" / "epoch_3" / "a_task").mkdir(parents=True)
    (tmp_path / "eval" / "epoch_3" / "a_task" / "scores.json").write_text('{"label": "ep')  # killed mid-write
    got = [(s.label, s.task) for s in read_scores(tmp_path, ["b_task", "a_task"])]
    assert got == [("base", "b_task"), ("base", "a_task"), ("epoch_2", "b_task"), ("epoch_2", "a_task"),
                   ("epoch_10", "b_task"), ("epoch_10", "a_task")]
    assert read_scores(tmp_path / "nowhere") == []


def test_is_evaluated_needs_every_task_on_one_checkpoint(tmp_path):
    assert not is_evaluated(tmp_path)
    _write_scores(tmp_path, "epoch_0", 0, "t1")
    _write_scores(tmp_path, "epoch_1", 1, "t2")
    assert is_evaluated(tmp_path) and is_evaluated(tmp_path, ["t1"])
    assert not is_evaluated(tmp_path, ["t1", "t2"])
    _write_scores(tmp_path, "epoch_1", 1, "t1")
    assert is_evaluated(tmp_path, ["t1", "t2"])
