"""The MCP `tune` tool through the SDK's in-memory client, without training: refused with one line without a
tune: block (and absent from a read-only server); `status` shows a search's progress before any run is scaffolded.
The search itself, started through the tool and followed by status: tests/e2e/test_tune_report.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from mcp_tool import tool

from tunelab.fsutil import atomic_write_json
from tunelab.rundir.tuned import TunedRate, trial_dir, write_best

TUNE = {"learning_rate": {"low": 1.0e-4, "high": 3.0e-2}, "per": [], "trials": 2, "budget": 0.5}


@pytest.fixture
def lab(tmp_path, workspace_spec) -> Path:
    root = tmp_path / "lab"
    workspace_spec(root, factors={"lora_rank": [4]}, controls=False, tune=TUNE)
    return root


def test_tune_without_a_tune_block_is_refused_in_one_line(lab):
    spec = yaml.safe_load((lab / "exp" / "experiment.yaml").read_text())
    del spec["tune"]
    (lab / "exp" / "experiment.yaml").write_text(yaml.safe_dump(spec))
    result = tool(lab, "tune", {"experiment_dir": "exp"})
    assert result.is_error and "no tune: block" in result.content[0].text and "Traceback" not in str(result.content)
    assert "outside the workspace root" in tool(lab, "tune", {"experiment_dir": "../elsewhere"}).content[0].text
    assert tool(lab, "tune", {"experiment_dir": "exp"}, read_only=True).is_error  # it trains: not read-only


def test_status_shows_a_search_before_any_run_is_scaffolded(lab):
    atomic_write_json(trial_dir(lab / "exp", "all", 0) / "status.json", {"run": "all-trial-0", "state": "completed"})
    atomic_write_json(trial_dir(lab / "exp", "all", 1) / "status.json", {"run": "all-trial-1", "state": "running"})
    rate = TunedRate(combination="all", learning_rate=3e-4, objective="val_loss", value=0.5, trial=0, trials=1)
    write_best(lab / "exp", {"all": rate})
    result = tool(lab, "status", {"experiment_dir": "exp"})
    assert not result.is_error, result.content
    out = result.structured_content
    assert out["runs"] == [] and out["tuning"] == [f"all: 2/2 trials (1 completed, 1 running); {rate.source}"]
