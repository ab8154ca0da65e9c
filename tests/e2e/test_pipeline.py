"""The whole pipeline through the CLI: scaffold → run (real training) → eval (real inspect-ai) →
results → report, on a tiny model. Fine-tuned runs must clearly beat the base-model control."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.fsutil import read_json, read_jsonl

pytestmark = pytest.mark.slow
runner = CliRunner()


def _ok(args):
    res = runner.invoke(app, args)
    assert res.exit_code == 0, f"{args}: {res.output}\n{res.stderr if res.stderr_bytes else ''}"
    return res


def test_sweep_end_to_end(finished_sweep):
    """plan → scaffold → run → eval → report ran in the finished_sweep fixture (e2e/conftest.py), each exiting 0;
    rank 4 and 16, 4 epochs, every epoch evaluated."""
    exp = finished_sweep.exp
    rows = json.loads(_ok(["results", str(exp), "--json"]).stdout)["runs"]
    by = {r["name"]: r for r in rows}
    assert [r["name"] for r in rows] == ["tiny_r4", "tiny_r16", "tiny_base"]  # design order, not lexical
    control = by["tiny_base"]
    assert control["type"] == "control" and control["state"] == "completed"
    assert control["score"] is not None and control["eval"][0]["label"] == "base"
    for name in ("tiny_r4", "tiny_r16"):
        r = by[name]
        assert r["state"] == "completed" and r["type"] == "fine-tuned"
        assert r["steps"] == 160 and r["final_loss"] < 1.0 and r["final_val_loss"] is not None
        # what the ledger shows is what the run measured (its summary.json), and the peak is the log's highest
        summary = read_json(exp / "runs" / name / "summary.json")
        assert (r["tokens_per_s"], r["peak_memory_gib"], r["duration_s"]) == (
            summary["tokens_per_s"], summary["peak_memory_gib"], summary["duration_s"])
        logged = read_jsonl(exp / "runs" / name / "metrics.jsonl")
        assert r["peak_memory_gib"] == max(row["peak_memory_gib"] for row in logged)
        assert [e["epoch"] for e in r["eval"]] == [0, 1, 2, 3]  # --epochs all (from the spec)
        assert r["score"] >= control["score"] + 0.5, (name, r["score"], control["score"])
        assert r["eval"][-1]["samples"] == 40
    csv = _ok(["results", str(exp), "--csv"]).stdout
    assert csv.splitlines()[0].startswith("name,type,model") and len(csv.splitlines()) == 4

    report = (exp / "report" / "report.md").read_text()  # the fixture's `tunelab report`
    assert "**Best run" in report
    for section in ("## Checkpoint verification", "## Training results", "## Evaluation"):
        assert section in report
    assert "2 of 2 fine-tuned runs completed" in report and "partial" not in report
    assert "| tiny_r16 | ✓" in report
    _findings_state_their_evidence(exp, report)

    # idempotent: nothing new to train, nothing new to evaluate
    scores = sorted((exp / "runs").glob("*/eval/*/*/scores.json"))
    assert len(scores) == 8  # one task on each of 4 epochs (eval.epochs: all) of 2 fine-tuned runs
    mtimes = [p.stat().st_mtime_ns for p in scores]
    assert "nothing to run" in _ok(["run", str(exp)]).output
    _ok(["eval", str(exp)])
    assert [p.stat().st_mtime_ns for p in scores] == mtimes


def _findings_state_their_evidence(exp, report: str) -> None:
    """Issue 22: one training run per rank, so the rank's effect is an observation kept out of the headline,
    naming its runs per level and the noise its interval leaves out; next steps price 3 seeds per configuration
    from the runs' measured wall times (summary.json); a still-falling val loss names its noise."""
    from tunelab.fsutil import human_seconds

    glance = report.split("## At a glance", 1)[1].split("\n## ", 1)[0]
    key = report.split("## Key findings", 1)[1].split("\n## ", 1)[0]
    steps = report.split("## Next steps", 1)[1].split("\n## ", 1)[0]
    assert "lora_rank: 16 − 4" not in glance and "lora_rank: 4 − 16" not in glance
    assert "Effects of lora_rank: observations only" in glance
    assert "**Observations per swept factor**" in key and "Best level" not in key
    line = next(x for x in key.splitlines() if x.startswith("- **lora_rank** on exact_match"))
    assert "an observation: 1 run per level, no seed replicates" in line and "not training noise" in line
    seconds = sum(json.loads((exp / "runs" / n / "summary.json").read_text())["duration_s"]
                  for n in ("tiny_r4", "tiny_r16"))
    step = next(x for x in steps.splitlines() if x.startswith("- Replicate before choosing lora_rank"))
    assert "`seed: [1, 2, 3]`" in step and "3 × 2 = 6 runs" in step
    assert f"≈ {human_seconds(3 * seconds)} of training: 3 × {human_seconds(seconds)}" in step
    for x in key.splitlines():
        if x.startswith("- **Still improving"):
            assert "beyond checkpoint-to-checkpoint noise" in x, x
        if x.startswith("- **Val loss lower at the end (observation)"):
            assert "noise" in x and ("not yet evidence" in x or "so not evidence" in x), x
