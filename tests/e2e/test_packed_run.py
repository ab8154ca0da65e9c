"""A packed run through the CLI with `attention: auto`: plan resolves it to varlen (per-example attention, no
dense mask), run.yaml, plan.md and summary.json say so, and the run learns the capitalization task as the shared
unpacked sweep does (the same base model, data and test split: its control is this run's control too)."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from tunelab.cli import app

pytestmark = pytest.mark.slow

# 4 rows of 64 tokens hold ~8 examples of ~27 tokens: about the examples per step of the sweep's batch of 8
PACKED = {"factors": {"lora_rank": [16]}, "controls": False,
          "training": {"epochs": 4, "packing": True, "batch_size": 4, "logging_steps": 10},
          "eval": {"max_tokens": 8, "epochs": "last"}}


def test_packed_run_trains_per_example_and_learns(tmp_path, spec_in, finished_sweep):
    spec = spec_in(tmp_path / "packed", **PACKED)
    exp = spec.parent
    for command, target in (("plan", spec), ("scaffold", spec), ("run", exp), ("eval", exp)):
        res = CliRunner().invoke(app, [command, str(target)])
        assert res.exit_code == 0, f"tunelab {command}: {res.output}"
    run_dir = exp / "runs" / "tiny_r16"
    assert yaml.safe_load((run_dir / "run.yaml").read_text())["training"]["attention"] == "varlen"
    assert "| varlen |" in (exp / "plan.md").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["attention"] == "varlen" and summary["packing"]["packed"]
    assert summary["attention_kernel"] == "per-sequence sdpa (not on a CUDA GPU)"  # the CPU path, no dense mask

    rows = {r["name"]: r for r in json.loads(CliRunner().invoke(app, ["results", str(exp), "--json"]).stdout)["runs"]}
    swept = {r["name"]: r for r in json.loads(CliRunner().invoke(
        app, ["results", str(finished_sweep.exp), "--json"]).stdout)["runs"]}
    control, unpacked = swept["tiny_base"]["score"], swept["tiny_r16"]["score"]
    packed = rows["tiny_r16"]["score"]
    assert packed >= control + 0.5, (packed, control)  # the bar the unpacked sweep's runs meet (test_pipeline)
    assert abs(packed - unpacked) <= 0.25, (packed, unpacked)
