"""A plan's own CPU timing (estimate/cpuspeed.py) taken while other processes hold every core: it is timed again,
known as contended, corrected by the slowdown the load predicts, said in the time's source and in the plan's
warnings, and kept in the cache for minutes only (a later plan times again) — never learned silently as this
machine's speed."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from hogs import hogs  # noqa: E402  (benchmarks/hogs.py: pure-Python busy loops, one core each)

from tunelab.plan.planner import make_plan  # noqa: E402


@pytest.fixture(autouse=True)
def fresh_history_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="the machine's load is read from /proc/stat")
def test_a_plan_timed_beside_hogs_on_every_core_says_so_and_corrects_by_the_slowdown(write_spec, tmp_path):
    cores = len(os.sched_getaffinity(0))
    with hogs(cores, max_s=120):  # a busy loop a core: the plan's timing gets at most half of each
        plan = make_plan(write_spec())
    e = plan.estimates["tiny_r4"]
    assert e.time_kind == "timed" and "under contention" in e.time_source, e.time_source
    got = re.search(r"micro-batches of (\d+) × (\d+) tokens .* took ([\d.]+) ms each .*up to ×([\d.]+) slower",
                    e.time_source)
    assert got is not None, e.time_source
    batch, seq, ms, slowdown = int(got[1]), int(got[2]), float(got[3]), float(got[4])
    assert slowdown > 1.15  # what cpuload calls contended
    # the speed is the timed one divided by the slowdown (printed to 0.1: the bound on the ratio)
    uncorrected = batch * seq / (ms / 1e3)
    assert e.tokens_per_s / uncorrected == pytest.approx(slowdown, abs=0.051)
    assert any("timed under contention" in w for w in plan.warnings), plan.warnings
    # a contended timing is kept for minutes only: past them, the next plan times again
    import json

    from tunelab.estimate import cpuspeed

    entries = sorted((tmp_path / "cache").glob("cpu-step/*.json"))  # one a shape the plan timed
    assert entries
    aged = {}
    for entry in entries:
        stored = json.loads(entry.read_text())
        assert stored["value"]["contended"] is True
        stored["value"]["timed_at"] -= cpuspeed.CONTENDED_KEEP_S + 1
        entry.write_text(json.dumps(stored))
        aged[entry] = stored["value"]["timed_at"]
    again = make_plan(write_spec()).estimates["tiny_r4"]  # past their minutes: timed again
    assert all(json.loads(e.read_text())["value"]["timed_at"] > t + cpuspeed.CONTENDED_KEEP_S for e, t in aged.items())
    assert again.time_kind == "timed"
