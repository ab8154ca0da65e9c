"""A new user's evaluation setup through the CLI, no tunelab code touched: several tasks (a built-in,
the choice built-in and their own inspect-ai task file with its own scorer) on every epoch of a real
tiny fine-tune, its control and an eval-only adapter: plan → scaffold → run → eval → results → report."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest
from inspect_ai.log import read_eval_log
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.evaluate.scores import read_task_scores
from tunelab.stats.samples import arrays, metric_on

pytestmark = pytest.mark.slow
runner = CliRunner()

LETTERS = '''
from inspect_ai import Task, task
from inspect_ai.dataset import Sample
from inspect_ai.model import GenerateConfig
from inspect_ai.scorer import Score, Target, mean, scorer
from inspect_ai.solver import TaskState, generate


@scorer(metrics=[mean()])
def first_letter_matches():
    async def score(state: TaskState, target: Target) -> Score:
        c = state.output.completion
        return Score(value=1.0 if c[:1] == target.text[:1] else 0.0, answer=c)
    return score


@task
def letters(words: str = "apple,river,stone"):
    return Task(dataset=[Sample(input=w, target=w.capitalize(), id=i) for i, w in enumerate(words.split(","))],
                solver=generate(), scorer=first_letter_matches(), config=GenerateConfig(max_tokens=8))
'''


def _ok(args):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, f"{args}: {res.output}"
    return res


def test_tasks_checkpoints_controls_and_eval_only_through_the_cli(write_spec, trained_adapter, tmp_path):
    from tunelab.data.capitalization import make_capitalization_dataset

    # what is checked is how tasks score checkpoints, not how well they learnt: a 60-word set (48 train rows,
    # 6 steps an epoch; 6 test rows, all evaluated at eval.limit 6, each a choice option of `pick`)
    small = make_capitalization_dataset(5, 60, tmp_path / "data", 0.8, seed=0)
    assert len(json.loads(small.read_text())["test"]) == 6
    spec = write_spec(
        datasets=[{"name": "caps", "path": str(small)}],
        factors={"lora_rank": [4]}, training={"epochs": 2, "logging_steps": 2},
        eval={"max_tokens": 8, "epochs": "all", "limit": 6, "tasks": [
            "exact_match", {"name": "pick", "builtin": "choice"},
            {"name": "letters", "file": "tasks/letters.py", "args": {"words": "apple,banana,cherry,delta"}}]},
        eval_only=[{"name": "shared", "path": str(trained_adapter[1]), "model": "tiny"}])
    exp = spec.parent
    (exp / "tasks").mkdir()
    (exp / "tasks" / "letters.py").write_text(textwrap.dedent(LETTERS))
    _ok(["plan", spec])
    _ok(["scaffold", spec])
    _ok(["run", exp])
    _ok(["eval", exp])
    rows = {r["name"]: r for r in json.loads(_ok(["results", exp, "--json"]).stdout)["runs"]}
    assert list(rows) == ["tiny_r4", "tiny_base", "shared"]
    tasks = ["exact_match", "pick", "letters"]
    expected_labels = {"tiny_r4": ["epoch_0", "epoch_1"], "tiny_base": ["base"], "shared": ["checkpoint"]}
    for name, labels in expected_labels.items():
        r = rows[name]
        assert r["state"] == "completed"
        assert [(e["label"], e["task"]) for e in r["eval"]] == [(lab, t) for lab in labels for t in tasks]
        pick = next(e for e in r["eval"] if e["task"] == "pick")
        assert set(pick["metrics"]) == {"accuracy", "balanced_accuracy", "macro_f1", "ece", "brier"}
        for e in r["eval"]:  # issue 14: per-sample scores kept; they recompute inspect's metrics; intervals
            kept = read_task_scores(Path(e["log_path"]).parent / "scores.json")
            arr = arrays(kept.per_sample)
            for metric, value in kept.metrics.items():
                if metric == "stderr":
                    assert metric not in e["intervals"]
                    continue
                assert metric_on(arr, metric) == pytest.approx(value), (name, e["task"], metric)
                _check_interval(arr, metric, value, e["intervals"][metric], (name, e["task"], metric))
            if e["task"] != "letters":
                assert e["samples"] == 6  # eval.limit
                continue
            log = read_eval_log(e["log_path"])  # the user's scorer, recomputed from the completions
            values = [1.0 if s.output.completion[:1] == s.target[:1] else 0.0 for s in log.samples]
            assert len(values) == 4 and e["score"] == pytest.approx(sum(values) / 4)
    assert rows["shared"]["type"] == "eval-only" and rows["shared"]["scores"]["letters"] == 1.0  # evalkit words

    mtimes = sorted(p.stat().st_mtime_ns for p in exp.glob("*/*/eval/*/*/scores.json"))
    assert len(mtimes) == 2 * 3 + 3 + 3
    _ok(["eval", exp, "--epochs", "0,1"])  # already scored: nothing redone
    assert sorted(p.stat().st_mtime_ns for p in exp.glob("*/*/eval/*/*/scores.json")) == mtimes
    res = runner.invoke(app, ["eval", str(exp), "--run", "tiny_r4", "--epochs", "5"])
    assert res.exit_code == 1 and "no complete checkpoint for epoch(s) [5]" in res.output

    _ok(["report", exp])
    md = (exp / "report" / "report.md").read_text()
    for t in tasks:
        assert f"Task **{t}**" in md
    assert "| shared | eval-only | checkpoint |" in md
    figures = {p.name for p in (exp / "report" / "figures").glob("*.png")}
    assert {"score_by_lora_rank__exact_match__accuracy.png", "score_by_lora_rank__pick__brier.png",
            "score_by_lora_rank__letters__mean.png"} <= figures


def _check_interval(arr, metric: str, value: float, iv: dict, where: tuple) -> None:
    """A proportion's interval is Wilson's (worked by hand); a mean of per-sample numbers (a task's mean, the
    Brier score) is scipy's bootstrap of those numbers, drawn with the recorded seed and resamples; the other
    choice metrics (resampled as whole metrics) are only checked for a bootstrap that holds their value."""
    import numpy as np
    from scipy.stats import bootstrap

    n = len(arr)
    if metric == "accuracy":  # 0/1 per sample: Wilson, z = 1.959964 for 95 %
        z, p = 1.959964, arr.values.mean()
        centre, half = (p + z * z / (2 * n)), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        assert iv["method"] == "wilson", where
        assert (iv["low"], iv["high"]) == pytest.approx(((centre - half) / (1 + z * z / n),
                                                         (centre + half) / (1 + z * z / n)), abs=1e-6), where
        return
    assert iv["method"] in ("bootstrap-bca", "bootstrap-percentile") and iv["seed"] == 0, (where, iv)
    if metric in ("mean", "brier"):
        if metric == "mean":
            x = arr.values
        else:  # scikit-learn's Brier: squared error summed over the options (the positive one alone with two)
            onehot = np.array([[float(t == lab) for lab in arr.labels] for t in arr.targets])
            x = ((arr.probs - onehot) ** 2).sum(axis=1) / (2 if len(arr.labels) == 2 else 1)
        assert x.mean() == pytest.approx(value), where
        method = {"bootstrap-bca": "BCa", "bootstrap-percentile": "percentile"}[iv["method"]]
        ci = bootstrap((x,), np.mean, n_resamples=iv["resamples"], method=method, confidence_level=0.95,
                       rng=np.random.default_rng(iv["seed"])).confidence_interval
        assert (iv["low"], iv["high"]) == pytest.approx((ci.low, ci.high), abs=1e-9), (where, iv)
        return
    assert iv["low"] - 1e-9 <= value <= iv["high"] + 1e-9, (where, iv)
