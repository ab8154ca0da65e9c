"""A plan made while others hold cores prices each run at the threads its job will take when it starts under that
load (host/adapt.py: the job fits its threads to the free cores; the plan applies the same rule to the load it
read while planning), and says so in plan.md. The mechanism is checked on loads the test gives (a window of 1.0
of 2 cores held by others); the window itself is checked against a real busy process outside this tree."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from tunelab.catalog import resolve_architecture
from tunelab.forecast import cpu_sharing
from tunelab.host import adapt
from tunelab.host.cpuload import LoadWindow
from tunelab.host.threads import LIBRARY_ENVS, MARK_ENV, decide
from tunelab.ledger import history
from tunelab.plan.markdown import render_plan_md
from tunelab.plan.planner import make_plan

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from hogs import hogs  # noqa: E402  (benchmarks/hogs.py: outside this process's tree)

TWO_CORES = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="the rule's threads need two cores")


@pytest.fixture
def rule_of_two(monkeypatch, tmp_path):
    """tunelab's own thread rule on two cores (no user count: the suite's OMP_NUM_THREADS removed), a fresh history."""
    for name in (*LIBRARY_ENVS, MARK_ENV, "OPENBLAS_NUM_THREADS", "TUNELAB_CPUS", "TUNELAB_THREAD_RULE"):
        monkeypatch.delenv(name, raising=False)
    given = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(sorted(given)[:2]))
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))
    assert decide(1).torch == 2 and adapt.adapts(decide(1))
    yield
    os.sched_setaffinity(0, given)


def _loaded(others_cores: float) -> LoadWindow:
    return LoadWindow(wall_s=1.0, cpu_s=0.1, others_cpu_s=others_cores, cores=2, threads=1)


def _row(threads: int, tps: float, parameters: int, **load) -> history.HistoryRun:
    return history.HistoryRun(key=f"k{threads}-{tps}", source="tunelab", model="tiny", layers=2, hidden=128,
                              parameters=parameters, device="cpu", cpu_threads=threads, packed=False, batch_size=8,
                              gradient_accumulation_steps=1, max_seq_len=64, lora_rank=8, tokens_per_step=216.0,
                              tokens_per_s=tps, steps=40, duration_s=20.0, train_time_s=10.0, overhead_s=1.0,
                              startup_s=6.0, lora_targets="all-linear", gradient_checkpointing=False, processes=1,
                              **{"contended": False, "others_share": 0.0, **load})


@TWO_CORES
def test_a_plan_under_load_prices_at_the_threads_the_job_will_take_and_says_so(rule_of_two, write_spec,
                                                                                 tiny_model, monkeypatch):
    monkeypatch.setattr(adapt, "load_while_planning", lambda: _loaded(1.0))
    monkeypatch.setattr(cpu_sharing, "load_while_planning", lambda: _loaded(1.0))
    params = resolve_architecture(tiny_model).parameters
    history.record([_row(1, 3000.0, params), _row(2, 5000.0, params)])  # this model, at 1 thread and at 2
    plan = make_plan(write_spec(resources={"cpu_runs_at_once": 1}))
    e = plan.estimates["tiny_r4"]
    assert e.tokens_per_s == 3000.0, e.time_source  # the 1-thread row: the job will take 1 of its 2 threads
    assert plan.cpu_sharing is not None and plan.cpu_sharing.chosen.threads_each == 1
    said = ("others held 1.0 of 2 cores while planning: a job starting now takes 1 of its 2 threads "
            "(host/adapt.py), and is priced at them")
    assert said in render_plan_md(plan) and said.replace("others", "Others", 1) in plan.warnings

    monkeypatch.setattr(adapt, "load_while_planning", lambda: _loaded(0.2))  # a little load: the job keeps 2
    monkeypatch.setattr(cpu_sharing, "load_while_planning", lambda: _loaded(0.2))
    idle = make_plan(write_spec(resources={"cpu_runs_at_once": 1}))
    assert idle.estimates["tiny_r4"].tokens_per_s == 5000.0 and "while planning" not in render_plan_md(idle)


def test_the_plan_and_the_job_fit_threads_by_one_rule():
    """threads_left is the job's rule (fit_to_free_cores) and the plan's: planned less the cores others held,
    rounded, at least one, never more than planned."""
    assert [adapt.threads_left(4, _loaded(held)) for held in (0.0, 0.4, 0.6, 1.0, 2.7, 3.9)] == [4, 4, 3, 3, 1, 1]
    assert adapt.threads_left(2, _loaded(1.0)) == 1


@TWO_CORES
def test_the_planning_window_sees_a_busy_process_outside_the_plan_and_is_read_once(monkeypatch):
    monkeypatch.setattr(adapt, "_watch", None)  # this test's window is not left to later plans of this process
    given = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(given)})  # the plan and the hog (which inherits the mask) on one core
    try:
        with hogs(1, max_s=60):
            adapt.watch_load()
            started = time.monotonic()
            window = adapt.load_while_planning()
            waited = time.monotonic() - started
            again = adapt.load_while_planning()
    finally:
        os.sched_setaffinity(0, given)
    assert window is not None and again is window  # one plan, one reading: every estimate at the same threads
    assert waited >= adapt.MIN_WINDOW_S - 0.05 and window.wall_s >= adapt.MIN_WINDOW_S
    # this process slept: the core's busy time is the hog's, which is not in this process's tree
    assert window.others_cpu_s / window.wall_s > 0.5


def test_a_loaded_run_is_measured_against_idle_runs_of_its_shape_at_the_threads_its_rule_planned():
    """The slowdown a run suffered: the idle rows' median speed (same shape, same CPU, the planned threads) over its
    own — not the load's share."""
    from dataclasses import replace

    from tunelab.ledger.slowdown import measured_slowdown

    idle = [_row(2, 5000.0, 10**6), _row(2, 4600.0, 10**6), _row(2, 5400.0, 10**6), _row(1, 3000.0, 10**6)]
    adapted = _row(1, 2500.0, 10**6, adapted_from=2, others_share=0.5)  # took 1 of 2 threads beside a hog
    assert measured_slowdown(adapted, idle) == 2.0  # 5000 (the median at 2 threads) / 2500
    contended = _row(2, 2000.0, 10**6, contended=True, slowdown=1.6, others_share=0.5)
    assert measured_slowdown(contended, idle) == 2.5  # more than the ×1.6 its share of the cores predicted
    assert measured_slowdown(_row(2, 5000.0, 10**6), idle) is None  # not loaded: nothing to measure
    other_rank = replace(adapted, lora_rank=16)
    assert measured_slowdown(other_rank, idle) is None  # no idle row of its shape
    assert history.load_label(replace(adapted, measured_slowdown=2.0)) == "1 of 2 threads for others' load, measured ×2.0"


@TWO_CORES
def test_a_plan_under_load_prices_the_slowdown_measured_under_a_like_load(rule_of_two, write_spec, tiny_model,
                                                                          monkeypatch):
    from tunelab.forecast import runs as run_forecast

    window = _loaded(1.0)  # others' share 0.5
    for where in (adapt, cpu_sharing):
        monkeypatch.setattr(where, "load_while_planning", lambda: window)
    monkeypatch.setattr(run_forecast, "planning_window", lambda: window)
    params = resolve_architecture(tiny_model).parameters
    idle_row = _row(1, 3000.0, params)
    history.record([idle_row])
    e = make_plan(write_spec(resources={"cpu_runs_at_once": 1})).estimates["tiny_r4"]
    # no run measured under load yet: the load's share models it (1 thread, a free core left: ×1, a lower bound)
    assert e.tokens_per_s == 3000.0 and "modelled from its share of the cores, a lower bound" in e.time_source

    measured = [_row(1, 2000.0, params, adapted_from=2, others_share=0.45, measured_slowdown=1.5),
                _row(1, 1500.0, params, adapted_from=2, others_share=0.55, measured_slowdown=2.0),
                _row(1, 1000.0, 2 * params, adapted_from=2, others_share=0.1, measured_slowdown=3.0)]  # unlike load
    history.record(measured)
    e = make_plan(write_spec(resources={"cpu_runs_at_once": 1})).estimates["tiny_r4"]
    assert e.tokens_per_s == pytest.approx(3000.0 / 1.75, abs=0.05), e.time_source  # the median of the two like ones
    assert "×1.75 for the load now (others held 1.0 of 2 cores while planning): measured on 2 run(s)" in e.time_source
