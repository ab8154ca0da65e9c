"""Tune → twins → report for real, on the tiny model: a one-trial search for a rank comparison, started through the
MCP `tune` tool (in the background) and followed with its `status` until the runs are scaffolded; then the sweep
trained at the tuned rate with each run's default-lr twin beside it, and the report's Tuning section saying whether
the comparison of final validation losses survives the learning rate (checked against the runs' own summary.json).
Not evaluated: the comparison of validation losses needs no scores, and evaluation is most of a sweep's cost."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest
import yaml
from mcp import Client
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.fsutil import read_json
from tunelab.mcp.server import build_server

pytestmark = pytest.mark.slow

TUNE = {"learning_rate": {"low": 1.0e-4, "high": 3.0e-2, "log": True}, "per": [], "trials": 1, "budget": 0.5}
TRAINING = {"max_steps": 6, "validation_every_steps": 3, "logging_steps": 1}
DEFAULT_LR = 0.002  # base_spec's training.learning_rate


def search_through_mcp(root: Path) -> tuple[dict, list[dict]]:
    """The tune tool's answer and every status seen until the background search ended."""
    async def go() -> tuple[dict, list[dict]]:
        async with Client(build_server(root)) as client:
            started = (await client.call_tool("tune", {"experiment_dir": "exp"})).structured_content
            seen: list[dict] = []
            end = time.monotonic() + 300
            while time.monotonic() < end and (not seen or seen[-1]["sweep_running"]):
                await anyio.sleep(0.5)
                seen.append((await client.call_tool("status", {"experiment_dir": "exp"})).structured_content)
            return started, seen

    return anyio.run(go)


@pytest.fixture(scope="module")
def reported(tmp_path_factory, workspace_spec) -> tuple[Path, dict, list[dict]]:
    root = tmp_path_factory.mktemp("tunereport") / "lab"
    spec = workspace_spec(root, factors={"lora_rank": [4, 8]}, controls=False,
                          training=TRAINING, tune=TUNE)
    exp = spec.parent
    started, seen = search_through_mcp(root)
    for command, target in (("run", exp), ("report", exp)):
        res = CliRunner().invoke(app, [command, str(target)])
        assert res.exit_code == 0, f"tunelab {command} {target}: {res.output}"
    return exp, started, seen


def test_the_mcp_tune_tool_searched_in_the_background_and_status_followed_it(reported):
    exp, started, seen = reported
    assert started["pid"] > 0 and started["log"] == "exp/.tunelab-mcp/tune.log" and started["tuning"] == []
    assert seen[0]["sweep_running"] and not seen[-1]["sweep_running"], seen[-1]["sweep_log_tail"]
    best = read_json(exp / "tune" / "best.json")["all"]
    source = (f"tuned: best of 1 trials, val loss {best['value']:.4g} at {best['learning_rate']:.3g}, "
              f"trial {best['trial']}")
    assert seen[-1]["tuning"] == [f"all: 1/1 trials (1 completed); {source}"]
    assert {r["name"] for r in seen[-1]["runs"]} == {"tiny_r4", "tiny_r8", "tiny_r4_lr-default", "tiny_r8_lr-default"}


def _final_val_loss(exp: Path, run: str) -> float:
    return read_json(exp / "runs" / run / "summary.json")["final_val_loss"]


def test_each_tuned_run_trained_beside_its_default_lr_twin(reported):
    reported, _, _ = reported
    best = read_json(reported / "tune" / "best.json")["all"]
    for rank in (4, 8):
        run = yaml.safe_load((reported / "runs" / f"tiny_r{rank}" / "run.yaml").read_text())
        twin = yaml.safe_load((reported / "runs" / f"tiny_r{rank}_lr-default" / "run.yaml").read_text())
        assert run["training"]["learning_rate"] == best["learning_rate"] and run["tuned"].startswith("tuned: best of 1")
        assert twin["training"]["learning_rate"] == DEFAULT_LR and twin["default_lr_of"] == f"tiny_r{rank}"
        assert "tuned" not in twin
        assert read_json(reported / "runs" / f"tiny_r{rank}_lr-default" / "status.json")["state"] == "completed"


def test_the_report_says_whether_the_comparison_survives_the_learning_rate(reported):
    reported, _, _ = reported
    md = (reported / "report" / "report.md").read_text()
    assert "## Tuning" in md
    assert (reported / "report" / "figures" / "tuning_all.png").is_file() and "figures/tuning_all.png" in md
    tuned = {r: _final_val_loss(reported, f"tiny_r{r}") for r in (4, 8)}
    default = {r: _final_val_loss(reported, f"tiny_r{r}_lr-default") for r in (4, 8)}
    rank = lambda losses: sorted(losses, key=losses.get)  # noqa: E731  lower validation loss: better
    lr = f"{read_json(reported / 'tune' / 'best.json')['all']['learning_rate']:.3g}"
    head = (f"final validation loss: lora_rank {rank(tuned)[0]} > lora_rank {rank(tuned)[1]} at the tuned rates "
            f"({lr})")
    if rank(tuned) == rank(default):
        expected = f"{head} and at the default {DEFAULT_LR:g}: the finding holds at both."
    else:
        expected = (f"{head}, but lora_rank {rank(default)[0]} > lora_rank {rank(default)[1]} at the default "
                    f"{DEFAULT_LR:g}: the ranking changes with the learning rate, so a comparison at the one default "
                    "rate is not a finding.")
    assert expected in md, md[md.index("## Tuning"):][:1500]
