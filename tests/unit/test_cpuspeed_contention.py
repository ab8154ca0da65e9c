"""A plan's own CPU timing (forecast/cpuspeed.py) taken while other processes hold every core: it is timed again,
known as contended, corrected by the slowdown the load predicts, said in the time's source and in the plan's
warnings, and kept in the cache for minutes only (a later plan times again) — never learned silently as this
machine's speed. Which round is the figure and the corrected speed are checked on rounds and loads the test gives
(exact figures worked out by hand); the hogs' test checks that a real load is seen as contention."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from pathlib import Path

import pytest

from tunelab.forecast.loopcost import LoopOverhead
from tunelab.host.cpuload import LoadWindow
from tunelab.plan.planner import make_plan

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from hogs import hogs  # noqa: E402  (benchmarks/hogs.py: outside this process's tree)


def given_loop(threads: int | None) -> LoopOverhead:
    """The job's loop, and the fresh interpreter's imports its measuring job would time (timed_startup keeps them
    instead of starting an interpreter of its own), given: each is a process of its own, not what these tests time."""
    return LoopOverhead(0.0, "+ the loop given", imports_s=1.0)


@pytest.fixture(autouse=True)
def fresh_history_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="the machine's load is read from /proc/stat")
def test_a_plan_timed_beside_hogs_on_every_core_says_so_and_corrects_by_the_slowdown(write_spec, tmp_path,
                                                                                     monkeypatch):
    from tunelab.forecast import loopcost

    # the job's loop and imports given (test_first_contact.py measures the loop's job): the subject here is the
    # shape's own timing beside the hogs
    monkeypatch.setattr(loopcost, "loop_overhead", given_loop)
    monkeypatch.setattr(loopcost, "ahead", lambda cpu_plan: contextlib.nullcontext())  # nor its job started ahead
    # the plan given one core and a busy loop on it (the hog inherits the mask): every core the plan may use is
    # taken, and the suite's other workers keep theirs
    given = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(given)})
    try:
        with hogs(1, max_s=120):  # outside this tree, on the mask it inherits: the plan's timing gets at most half
            plan = make_plan(write_spec())
    finally:
        os.sched_setaffinity(0, given)
    e = plan.estimates["tiny_r4"]
    assert e.time_kind == "timed" and "under contention" in e.time_source, e.time_source
    got = re.search(r"micro-batches of (\d+) × (\d+) tokens .* took ([\d.]+) ms each .*up to ×([\d.]+) slower",
                    e.time_source)
    assert got is not None, e.time_source
    assert float(got[4]) > 1.15  # hogs on every core: the load read is what cpuload calls contended
    assert any("timed under contention" in w for w in plan.warnings), plan.warnings
    # a contended timing is kept for minutes only: past them, the next plan times again
    from tunelab.forecast import planscope

    entries = sorted((tmp_path / "cache").glob("cpu-step/*.json"))  # one a shape the plan timed
    assert entries
    aged = {}
    for entry in entries:
        stored = json.loads(entry.read_text())
        assert stored["value"]["contended"] is True
        stored["value"]["timed_at"] -= planscope.CONTENDED_KEEP_S + 1
        entry.write_text(json.dumps(stored))
        aged[entry] = stored["value"]["timed_at"]
    os.sched_setaffinity(0, {min(given)})  # the same one core (so the same thread count and shape), no hog now
    try:
        again = make_plan(write_spec()).estimates["tiny_r4"]  # past their minutes: timed again
    finally:
        os.sched_setaffinity(0, given)
    assert all(json.loads(e.read_text())["value"]["timed_at"] > t + planscope.CONTENDED_KEEP_S for e, t in aged.items())
    assert again.time_kind == "timed"


def _window(wall_s: float, others_cpu_s: float, threads: int) -> LoadWindow:
    return LoadWindow(wall_s=wall_s, cpu_s=wall_s, others_cpu_s=others_cpu_s, cores=2, threads=threads)


# Rounds of three timed steps each, with the load over them, as step_rounds.timed_round returns them (the steps'
# times and the meter's window are what the plan's timing reads). The tiny spec's micro-batch: 8 rows × 27 tokens.
CONTENDED = [  # others held 1.5 of 2 cores, then 1 of 2, then 1.33 of 2: the three rounds taken, the 2nd the figure
    ([0.10, 0.10, 0.10], _window(0.30, 0.45, threads=2)),  # 2 cores − 0.45/0.30 = 0.5 free: ×4
    ([0.08, 0.08, 0.08], _window(0.24, 0.24, threads=2)),  # 2 − 1 = 1 free: ×2
    ([0.06, 0.06, 0.06], _window(0.18, 0.24, threads=2)),  # 2 − 1.33 = 0.67 free: ×3
]
QUIET = [([0.10, 0.10, 0.10], _window(0.30, 0.30, threads=1))]  # others held 1 of 2; its 1 thread had the other


@pytest.mark.parametrize("rounds, tokens_per_s, words", [
    (CONTENDED, 5400.0, "took 80.0 ms each (median, spread 0%, 3 rounds); timed under contention (others held "
                        "the cores: up to ×2.0 slower)"),  # 8 × 27 / 0.08 s = 2700 tokens/s, × 2
    (QUIET, 2160.0, "took 100.0 ms each (median, spread 0%); `tunelab probe`"),  # 8 × 27 / 0.10 s, no more rounds
])
def test_the_round_with_most_of_the_cores_is_the_figure_corrected_by_its_slowdown(write_spec, tmp_path, monkeypatch,
                                                                                  rounds, tokens_per_s, words):
    """The timing's rounds and their load are given (the model is still built and warmed up for real): a contended
    round is timed again, up to two more; the round with the smallest slowdown is the figure, its speed multiplied
    by that slowdown, and the cache keeps what was read."""
    from tunelab.forecast import cpuspeed, loopcost, step_rounds
    from tunelab.forecast import runs as run_forecast

    # the job's loop, measured once per machine, given too: its own load is the machine's, not these rounds'
    monkeypatch.setattr(loopcost, "loop_overhead", given_loop)
    monkeypatch.setattr(loopcost, "ahead", lambda cpu_plan: contextlib.nullcontext())  # nor its job started ahead
    monkeypatch.setattr(run_forecast, "planning_window", lambda: None)  # nor is the live load while planning (an xdist
    # sibling's, in CI): the rounds given are the only load this test prices
    given = iter(rounds)
    monkeypatch.setattr(cpuspeed, "timed_round", lambda step: step_rounds.Round(*next(given)))
    plan = make_plan(write_spec(factors={"lora_rank": [4]}))
    e = plan.estimates["tiny_r4"]
    assert next(given, None) is None  # every round given was taken, no more
    assert e.time_kind == "timed" and e.tokens_per_s == tokens_per_s
    # the loss reads the answers' logits only: the share the data gives (models/loss_positions.py, tested there)
    assert re.search(r"micro-batches of 8 × 27 tokens of this model \(random weights, LoRA rank 4, the loss on \d+% "
                     rf"of the positions(, linear layers by oneDNN)?\) {re.escape(words)}", e.time_source), e.time_source
    assert any("timed under contention" in w for w in plan.warnings) == (rounds is CONTENDED)
    (entry,) = (tmp_path / "cache").glob("cpu-step/*.json")
    stored = json.loads(entry.read_text())["value"]
    assert (stored["median_s"], stored["slowdown"], stored["contended"], stored["rounds"]) == (
        (0.08, 2.0, True, 3) if rounds is CONTENDED else (0.10, 1.0, False, 1))
