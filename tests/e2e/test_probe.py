"""`tunelab probe`: real steps of each run shape on this machine, recorded in the history, so the plan of a
fresh machine has a measured time for every run; `tunelab history` shows the rows and where they came from."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import pytest
from loadrule import check_contended, slowdown_by_rule
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.plan.markdown import render_plan_md
from tunelab.plan.planner import make_plan

pytestmark = pytest.mark.slow
runner = CliRunner()


def test_probe_gives_every_run_a_measured_time(write_spec, spec_in, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))
    # two ranks and two learning rates: 4 runs, 2 shapes (the learning rate changes neither speed nor memory)
    spec = write_spec(factors={"lora_rank": [4, 8], "learning_rate": [0.001, 0.002]})
    before = make_plan(spec)
    # nothing measured here: the plan times the shapes itself, a wide interval, and names the probe
    assert all(e.time_kind == "timed" and "`tunelab probe`" in e.time_source for e in before.estimates.values())

    res = runner.invoke(app, ["probe", str(spec), "--json"])
    assert res.exit_code == 0, res.output
    assert res.stderr.count("probe ") == 2 and "probe 2/2" in res.stderr  # a progress line per shape, on stderr
    assert "tokens/s on cpu" in res.stderr
    doc = json.loads(res.stdout)  # the JSON alone on stdout, valid against `schema --output probe`
    jsonschema.validate(doc, json.loads(runner.invoke(app, ["schema", "--output", "probe"]).stdout))
    probed = doc["shapes"]
    assert sorted(r["lora_rank"] for r in probed) == [4, 8] and all(r["tokens_per_s"] > 0 for r in probed)

    after = make_plan(spec)
    assert len(after.estimates) == 4
    for e in after.estimates.values():
        assert e.seconds is not None and e.seconds > 0
        assert e.time_source.startswith("history: ") and "probed run(s) of this model on cpu" in e.time_source
        assert "start-up (assumed)" not in e.time_source  # the probe's processes measured their start-up
        assert e.time_kind == "probed" and e.startup_kind == "probed" and e.time_range is not None
        # its interval is the probed kind's width (σ 0.30), not the timed one's it replaces (σ 0.30 too: named apart)
        was = before.estimates[e.run].time_range
        assert was is not None and "timed: width σ 0.30" in was.basis, was.basis
        assert "probed: width σ 0.30" in e.time_range.basis, e.time_range.basis
    assert "without a time estimate" not in render_plan_md(after)

    out = runner.invoke(app, ["history", "--json"])
    rows = json.loads(out.stdout)["rows"]
    assert len(rows) == 2 and {r["kind"] for r in rows} == {"probed"}
    printed = {r["lora_rank"]: r for r in probed}  # what the probe's --json said of each shape
    cores = len(os.sched_getaffinity(0))  # the probe's steps ran on this process's cores (nothing pinned them)
    for r in rows:
        assert r["device"] == "cpu" and r["memory_kind"] == "host_max_rss" and r["peak_memory_gib"] > 0
        assert r["cpu_model"] == next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                                      if line.startswith("model name"))  # a row prices this CPU's runs only
        # 8 rows of the capitalization set's 27 tokens each (its words are of one length: no padding)
        assert r["tokens_per_s"] > 0 and r["tokens_per_step"] == 8 * 27 and str(spec) in r["origin_where"]
        assert r["lora_rank"] in (4, 8) and r["batch_size"] == 8
        # its process's age once its trainer was built: measured, and stored as the probe reported it
        assert r["startup_s"] > 0 and r["startup_s"] == printed[r["lora_rank"]]["startup_s"]
        # the load over its timed steps (cpuload.py), as the rule gives it from the row's own figures: its
        # threads wanted min(threads, cores) cores, others left cores × (1 − share) (at least 0.1)
        slowdown = slowdown_by_rule(r["cpu_threads"], cores, cores * r["others_share"])
        assert r["slowdown"] == pytest.approx(slowdown, rel=5e-3, abs=2e-3)
        check_contended(r["contended"], slowdown)
        # how far its timings disagreed (all of them kept): measured, and stored as the probe reported it
        assert r["time_spread"] is not None and r["time_spread"] == printed[r["lora_rank"]]["time_spread"]
        # one real trainer checkpoint written and timed, as a run's save writes it: what plans price saves at
        assert r["save_s"] > 0 and r["save_s"] == printed[r["lora_rank"]]["save_s"]
    assert "load" in runner.invoke(app, ["history"]).output  # the table's load column
    # the probe trained in scratch run dirs (runs/.probe-SHAPE, next to where the runs will be): all gone
    assert (spec.parent / "runs").is_dir() and not list((spec.parent / "runs").glob(".probe-*"))

    # a second probe, through the MCP tool, of one of those shapes (rank 4: the two runs of another spec)
    # replaces its row, keeps the other, and reports its progress
    one_shape = spec_in(tmp_path / "exp_r4", factors={"lora_rank": [4], "learning_rate": [0.001, 0.002]})
    progress, estimated = probe_through_mcp(tmp_path.parent, one_shape)  # the session's temporary root
    assert [(done, total) for done, total, _ in progress] == [(0, 1), (1, 1)]  # the shape's start and end
    assert [m.split()[0] for _, _, m in progress] == ["probing", "probed"]
    assert progress[1][2].startswith(f"probed {progress[0][2].removeprefix('probing ')}: ")
    assert progress[1][2].endswith("tokens/s")
    assert estimated == [(0, 1, "planning: simulating each run shape's training step"), (1, 1, "estimated 2 run(s)")]
    reprobed = json.loads(runner.invoke(app, ["history", "--json"]).stdout)["rows"]
    assert sorted(r["lora_rank"] for r in reprobed) == [4, 8]
    where = {r["lora_rank"]: r["origin_where"] for r in reprobed}
    assert str(one_shape) in where[4] and str(spec) in where[8]  # the rank-4 row is the new probe's


Progress = list[tuple[float, float | None, str | None]]


def probe_through_mcp(root: Path, spec: Path) -> tuple[Progress, Progress]:
    """The MCP probe and estimate tools called by the SDK's in-memory client; the progress notifications each
    sent."""
    import anyio
    from mcp import Client

    from tunelab.mcp.server import build_server

    seen: dict[str, Progress] = {"probe": [], "estimate": []}

    async def go() -> None:
        async with Client(build_server(root)) as client:
            for tool, progress in seen.items():
                async def on_progress(done: float, total: float | None, message: str | None,
                                      progress: Progress = progress) -> None:
                    progress.append((done, total, message))

                result = await client.call_tool(tool, {"spec": str(spec.relative_to(root))},
                                                progress_callback=on_progress)
                assert not result.is_error, result.content
                if tool == "probe":
                    assert [s["lora_rank"] for s in result.structured_content["shapes"]] == [4]

    anyio.run(go)
    return seen["probe"], seen["estimate"]


def test_find_max_batch_bisects_with_real_steps(write_spec, tmp_path, monkeypatch):
    """Without a GPU it is refused; with the OOM test knob standing in for a GPU's limit (a step above 12 rows
    fails as a CUDA OOM would), doubling then bisection with real steps finds exactly 12."""
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))
    spec = write_spec(factors={"lora_rank": [4]})
    refused = runner.invoke(app, ["probe", str(spec), "--find-max-batch"])
    assert refused.exit_code == 1 and "needs a GPU" in " ".join(refused.output.split())

    monkeypatch.setenv("TUNELAB_FAULT_OOM_ABOVE_BATCH", "12")
    res = runner.invoke(app, ["probe", str(spec), "--find-max-batch"])
    assert res.exit_code == 0, res.output
    assert "largest micro-batch that ran: 12" in " ".join(res.output.split())
    (row,) = json.loads(runner.invoke(app, ["history", "--json"]).stdout)["rows"]
    assert row["max_micro_batch"] == 12 and row["simulated_max_micro_batch"] is None  # no GPU: nothing simulated
