"""`tunelab probe`: real steps of each run shape on this machine, recorded in the history, so the plan of a
fresh machine has a measured time for every run; `tunelab history` shows the rows and where they came from."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.plan.planner import make_plan
from tunelab.plan.markdown import render_plan_md

pytestmark = pytest.mark.slow
runner = CliRunner()


def test_probe_gives_every_run_a_measured_time(write_spec, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))
    # two ranks and two learning rates: 4 runs, 2 shapes (the learning rate changes neither speed nor memory)
    spec = write_spec(factors={"lora_rank": [4, 8], "learning_rate": [0.001, 0.002]})
    before = make_plan(spec)
    assert all(e.seconds is None and e.time_source.startswith("none") for e in before.estimates.values())

    res = runner.invoke(app, ["probe", str(spec)])
    assert res.exit_code == 0, res.output
    assert res.output.count("probe ") == 2 and "probe 2/2" in res.output  # a progress line per shape
    assert "tokens/s on cpu" in res.output

    after = make_plan(spec)
    assert len(after.estimates) == 4
    for e in after.estimates.values():
        assert e.seconds is not None and e.seconds > 0
        assert e.time_source.startswith("history: ") and "probed run(s) of this model on cpu" in e.time_source
    assert "without a time estimate" not in render_plan_md(after)

    out = runner.invoke(app, ["history", "--json"])
    rows = json.loads(out.stdout)
    assert len(rows) == 2 and {r["kind"] for r in rows} == {"probed"}
    for r in rows:
        assert r["device"] == "cpu" and r["memory_kind"] == "host_max_rss" and r["peak_memory_gib"] > 0
        assert r["tokens_per_s"] > 0 and r["tokens_per_step"] > 0 and str(spec) in r["origin_where"]
        assert r["lora_rank"] in (4, 8) and r["batch_size"] == 8
    # the scratch trainer dirs are gone
    assert not list((spec.parent / "runs").glob(".probe-*")) if (spec.parent / "runs").exists() else True

    again = runner.invoke(app, ["probe", str(spec)])  # a second probe replaces the rows of the same shapes
    assert again.exit_code == 0
    assert len(json.loads(runner.invoke(app, ["history", "--json"]).stdout)) == 2


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
    (row,) = json.loads(runner.invoke(app, ["history", "--json"]).stdout)
    assert row["max_micro_batch"] == 12 and row["simulated_max_micro_batch"] is None  # no GPU: nothing simulated
