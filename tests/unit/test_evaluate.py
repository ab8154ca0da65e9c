"""Evaluation plumbing that needs no model run: target selection, errors, scorers, score files."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from inspect_ai.model import ModelOutput
from inspect_ai.scorer import CORRECT, INCORRECT, Target
from inspect_ai.solver import TaskState

from tunelab.errors import TunelabError
from tunelab.evaluate import read_scores
from tunelab.evaluate.runner import evaluate_run, select_targets
from tunelab.evaluate.tasks import build_samples, build_task, exact_match, includes
from tunelab.runconfig import RunConfig

WORDS = ["apple", "banana", "cherry"]


def make_cfg(root: Path, kind: str = "finetune", model_path: Path | None = None, **eval_spec) -> RunConfig:
    data = root / "data.json"
    if not data.exists():
        rows = [{"input": w, "output": w.capitalize()} for w in WORDS]
        data.write_text(json.dumps({"train": rows, "validation": rows, "test": rows}))
    return RunConfig(
        name="r1" if kind == "finetune" else "base_ctl",
        kind=kind,
        experiment="x",
        experiment_dir=str(root),
        model={"name": "tiny", "path": str(model_path or root / "no_model")},
        dataset={"name": "caps", "path": str(data)},
        prompt="Capitalize: {input}",
        training={} if kind == "finetune" else None,
        eval=eval_spec,
    )


def fake_checkpoint(run_dir: Path, epoch: int, complete: bool = True) -> Path:
    d = run_dir / "checkpoints" / f"epoch_{epoch}"
    d.mkdir(parents=True)
    (d / "adapter_config.json").write_text("{}")
    (d / "adapter_model.safetensors").write_bytes(b"x" if complete else b"")
    return d


def test_targets_last_all_list_and_incomplete_ignored(tmp_path):
    cfg = make_cfg(tmp_path)
    for e in (0, 1):
        fake_checkpoint(cfg.run_dir, e)
    fake_checkpoint(cfg.run_dir, 2, complete=False)  # still being written: not evaluable
    assert [t.label for t in select_targets(cfg)] == ["epoch_1"]  # eval.epochs defaults to last
    assert [t.epoch for t in select_targets(cfg, "all")] == [0, 1]
    assert select_targets(cfg, [0])[0].adapter_path == cfg.run_dir / "checkpoints" / "epoch_0"
    with pytest.raises(TunelabError, match=r"epoch\(s\) \[2\]"):
        select_targets(cfg, [2])


def test_control_evaluates_the_base_model(tmp_path):
    targets = select_targets(make_cfg(tmp_path, kind="control"), "all")
    assert [(t.label, t.epoch, t.adapter_path) for t in targets] == [("base", None, None)]


def test_no_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    cfg = make_cfg(tmp_path, model_path=tmp_path / "model")
    with pytest.raises(TunelabError, match="no complete checkpoint") as err:
        evaluate_run(cfg)
    assert str(cfg.run_dir / "checkpoints") in str(err.value)


def test_missing_base_model_is_a_clear_error(tmp_path):
    cfg = make_cfg(tmp_path, kind="control")
    with pytest.raises(TunelabError, match="base model directory not found") as err:
        evaluate_run(cfg)
    assert str(tmp_path / "no_model") in str(err.value)


def test_samples_follow_split_fields_and_limit(tmp_path):
    cfg = make_cfg(tmp_path, limit=2)
    samples = build_samples(cfg)
    assert [(s.id, s.input, s.target) for s in samples] == [(0, "apple", "Apple"), (1, "banana", "Banana")]
    task = build_task(make_cfg(tmp_path, task="includes", split="validation"))
    assert task.name == "includes" and len(task.dataset) == 3


def _score(scorer_factory, completion: str, target: str) -> str:
    state = TaskState(model="tunelab/x", sample_id=0, epoch=1, input="apple", messages=[],
                      output=ModelOutput.from_content("tunelab/x", completion))
    return asyncio.run(scorer_factory()(state, Target(target))).value


def test_exact_match_is_case_sensitive_and_strips():
    assert _score(exact_match, " Apple\n", "Apple") == CORRECT
    assert _score(exact_match, "apple", "Apple") == INCORRECT
    assert _score(exact_match, "Apple pie", "Apple") == INCORRECT


def test_includes_is_case_sensitive():
    assert _score(includes, "it is Apple.", "Apple") == CORRECT
    assert _score(includes, "it is apple.", "Apple") == INCORRECT


def test_read_scores_sorted_base_then_epochs_and_skips_truncated(tmp_path):
    for label, epoch in (("epoch_10", 10), ("epoch_2", 2), ("base", None)):
        d = tmp_path / "eval" / label
        d.mkdir(parents=True)
        (d / "scores.json").write_text(json.dumps({"label": label, "epoch": epoch}))
    (tmp_path / "eval" / "epoch_3").mkdir()
    (tmp_path / "eval" / "epoch_3" / "scores.json").write_text('{"label": "ep')  # killed mid-write
    assert [s["label"] for s in read_scores(tmp_path)] == ["base", "epoch_2", "epoch_10"]
    assert read_scores(tmp_path / "nowhere") == []
