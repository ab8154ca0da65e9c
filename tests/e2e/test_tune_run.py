"""`tunelab scaffold` then `tunelab run` on a spec with a `tune:` block — the order every other spec uses (issue 55):
`run` runs the learning-rate search first (its trials real runs under tune/ on the local executor, as `tunelab tune`
runs them), scaffolds the runs at the rate it chose, and only then trains them, at that rate. The report says where
each combination's rate came from: before the run, "not searched"; after it, the search's trials and best.
Kept small: one combination, two trials of 3 steps, two runs of 6 at a constant rate, no twins, no evaluation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.fsutil import read_json, read_jsonl

pytestmark = pytest.mark.slow

TUNE = {"learning_rate": {"low": 1.0e-4, "high": 3.0e-2, "log": True}, "per": [], "trials": 2, "budget": 0.5,
        "compare_default": False}
TRAINING = {"max_steps": 6, "validation_every_steps": 3, "logging_steps": 1, "lr_scheduler": "constant"}
RUNS = ("tiny_r4", "tiny_r8")


def invoke(*args: str) -> str:
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, f"tunelab {' '.join(args)}: {res.output}"
    return res.output


def rate_lines(exp: Path) -> list[str]:
    """The report's Tuning lines of the one combination ('all': tune.per is [])."""
    invoke("report", str(exp))
    md = (exp / "report" / "report.md").read_text()
    return [line for line in md[md.index("## Tuning"):].splitlines() if line.startswith("- `all`")]


def test_run_searches_first_and_trains_the_runs_at_the_rate_it_chose(write_spec):
    spec = write_spec(factors={"lora_rank": [4, 8]}, controls=False, training=TRAINING, tune=TUNE)
    exp = spec.parent
    invoke("scaffold", str(spec))
    assert rate_lines(exp) == ["- `all` (tiny_r4, tiny_r8): not searched: the spec's default rate 0.002"]

    out = invoke("run", str(exp))
    assert "has not chosen the rate of all: searching it first" in out
    trials = exp / "tune" / "all"
    assert sorted(p.name for p in trials.iterdir() if p.name.startswith("trial-")) == ["trial-0", "trial-1"]
    best = read_json(exp / "tune" / "best.json")["all"]
    assert best["trials"] == 2 and best["trial"] in (0, 1)
    chosen = yaml.safe_load((trials / f"trial-{best['trial']}" / "run.yaml").read_text())["training"]
    assert chosen["learning_rate"] == best["learning_rate"] and chosen["max_steps"] == 3
    source = (f"tuned: best of 2 trials, val loss {best['value']:.4g} at {best['learning_rate']:.3g}, "
              f"trial {best['trial']}")
    assert f"all: {source}" in out
    for name in RUNS:
        run_dir = exp / "runs" / name
        run = yaml.safe_load((run_dir / "run.yaml").read_text())
        assert run["training"]["learning_rate"] == best["learning_rate"] and run["tuned"] == source
        assert read_json(run_dir / "status.json")["state"] == "completed"
        rates = [row["lr"] for row in read_jsonl(run_dir / "metrics.jsonl") if row.get("lr") is not None]
        assert rates and all(math.isclose(lr, best["learning_rate"], rel_tol=1e-6) for lr in rates)  # trained at it

    assert rate_lines(exp) == [f"- `all` (tiny_r4, tiny_r8): searched: 2 trials, best val loss {best['value']:.4g} "
                               f"at rate {best['learning_rate']:.3g}"]
