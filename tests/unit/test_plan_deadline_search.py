"""The deadline verdict with a learning-rate search: the search's priced time comes before the runs (at P10, P50
and P90), the verdict includes it, and where the sweep does not fit, what would have to give may be fewer trials
or a smaller budget fraction — the largest that fit at P90, checked here against the price computed by hand."""

from __future__ import annotations

import math

import pytest

from tunelab.execute.schedule import Device
from tunelab.mcp.models import PlanOut
from tunelab.plan.deadline import DeadlineVerdict, RunTimeline, SearchLine, judge
from tunelab.plan.halving import spent_share
from tunelab.plan.markdown import render_plan_md
from tunelab.plan.planner import make_plan, split_lengths
from tunelab.plan.sweeptime import Sweep, sweep_forecast
from tunelab.rundir.tuned import TunedRate, write_best

TUNE = {"learning_rate": {"low": 1e-4, "high": 1e-2}, "per": ["lora_rank"], "trials": 6, "budget": 0.25}


@pytest.fixture(autouse=True)
def fresh_history(tmp_path, monkeypatch):
    """A history and a timing cache of this test's own: its plans all price with the one CPU timing the first one
    took (the suite's shared cache re-times a contended timing after CONTENDED_KEEP_S, which may fall between two
    plans of one test, and the test's hand prices are made from the first plan's estimates)."""
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))


def _line(name: str, total: float, spread: float = 0.2) -> RunTimeline:
    return RunTimeline(run=name, kind="finetune", train_s=total, eval_s=0.0, total_s=total,
                       total_p10_s=total * (1 - spread), total_p90_s=total * (1 + spread), train_source="test",
                       eval_source="test")


def test_the_search_comes_before_the_runs_at_every_percentile():
    lines = [_line("a", 100.0), _line("b", 60.0)]
    search = SearchLine(combinations=2, trials=4, budget=0.25, seconds=50.0, p10_s=30.0, p90_s=80.0)
    devices = [Device("0"), Device("1")]
    # the runs alone: 100 (P10 80, P90 120); the search first: 150 (110, 200)
    d = judge("x", 250.0, lines, devices, "two GPUs", search=search)
    assert (d.makespan_p10_s, d.makespan_s, d.makespan_p90_s) == (110.0, 150.0, 200.0)
    assert d.verdict == DeadlineVerdict.FITS and d.slack_s == 50.0 and d.search == search
    assert judge("x", 170.0, lines, devices, "two GPUs", search=search).verdict == DeadlineVerdict.FITS_P50
    assert judge("x", 120.0, lines, devices, "two GPUs").verdict == DeadlineVerdict.FITS  # without it, it fits
    late = judge("x", 140.0, lines, devices, "two GPUs", search=search)
    assert late.verdict == DeadlineVerdict.DOES_NOT_FIT
    # what the runs would have to give aims at the deadline less the search's P90 (60 s left for a's 120 at P90)
    gives = {g.what: g for g in late.gives}
    assert gives["epochs"].makespan_s is not None and gives["epochs"].makespan_s <= 140.0 + 0.5
    assert gives["epochs"].makespan_s > 80.0  # the search's P90 is in every option's makespan
    unknown = judge("x", 1e6, lines, devices, "two GPUs", search=search.model_copy(update={"seconds": None}))
    assert unknown.verdict == DeadlineVerdict.UNKNOWN and unknown.unknown[-1].startswith("learning-rate search")


def _search_p90(plan, trials: int, budget: float) -> float:
    """The search's P90 by hand: per combination trials × (start-up + share × budget × rest), scaled to the run's P90."""
    total = 0.0
    for cost in plan.search:
        est = plan.estimates[cost.run]
        steps = max(1, math.floor(budget * est.steps))
        share = spent_share(trials, steps, max(1, steps // 4))
        seconds = trials * (est.startup_s + share * budget * (est.seconds - est.startup_s))
        total += round(est.time_range.p90_s * seconds / est.seconds, 1)
    return total


def _runs(plan):
    """The runs' own forecast of a plan (without the search)."""
    return sweep_forecast(Sweep(plan.spec, plan.runs, plan.estimates, plan.gpu, plan.node, levered=bool(plan.levers)),
                          split_lengths)


def test_a_plan_with_a_search_and_a_deadline_counts_it_and_names_fewer_trials_or_a_smaller_budget(write_spec):
    spec = write_spec(factors={"lora_rank": [4, 8]}, tune=TUNE)
    plan = make_plan(spec, deadline="1d")
    d = plan.deadline
    assert d is not None and d.search is not None and d.verdict == DeadlineVerdict.FITS
    runs = _runs(plan)
    searched = sum(c.seconds for c in plan.search if c.seconds is not None)
    assert d.search.seconds == pytest.approx(searched, abs=0.05)
    assert d.makespan_s == pytest.approx(runs.makespan_s + searched, abs=0.15)
    assert d.makespan_p90_s == pytest.approx(runs.makespan_p90_s + _search_p90(plan, 6, 0.25), abs=0.15)
    # a deadline the runs meet at P90 but not with the whole search: room for 3 trials' search, not 4
    room = (_search_p90(plan, 3, 0.25) + _search_p90(plan, 4, 0.25)) / 2
    seconds = math.floor(runs.makespan_p90_s + room)
    # Each tighter plan is checked against the prices of its own estimates: with a deadline the levers choose each
    # run's micro-batch split from the speeds timed on this CPU, and a timing repeated under other work's load
    # (CI's test workers) can tip the choice, and with it the runs' and the search's price (seen once: a budget
    # 0.0303 by the plan's own prices against 0.024 by the first plan's).
    tight_plan = make_plan(spec, deadline=f"{seconds}s")
    tight, tight_runs = tight_plan.deadline, _runs(tight_plan)
    assert tight is not None and tight.verdict in (DeadlineVerdict.DOES_NOT_FIT, DeadlineVerdict.FITS_P50)
    gives = {g.what: g for g in tight.gives}
    assert gives["trials"].change.startswith("3 trials per combination instead of 6")
    assert gives["trials"].makespan_s == pytest.approx(tight_runs.makespan_p90_s + _search_p90(tight_plan, 3, 0.25),
                                                       abs=0.15)
    # every trial's start-up is paid in full: a smaller budget saves less; room for 6 trials at a budget of 0.15
    seconds = math.floor(runs.makespan_p90_s + (_search_p90(plan, 6, 0.15) + _search_p90(plan, 6, 0.16)) / 2)
    budget_plan = make_plan(spec, deadline=f"{seconds}s")
    gives = {g.what: g for g in budget_plan.deadline.gives}  # type: ignore[union-attr]
    budget = float(gives["budget"].change.split(" of a run's steps")[0].split()[-1])
    left = seconds - _runs(budget_plan).makespan_p90_s

    def largest(room: float) -> float:
        """The price is not monotone in the budget (a trial's rungs move as it gains a step): every budget tried by
        hand (not necessarily near 0.15: a larger budget far below may fit too)."""
        return max(b / 1e4 for b in range(1, 2500) if _search_p90(budget_plan, 6, b / 1e4) <= room)
    # the runs' P90 is known here to its rounded 0.1 s, the plan uses it unrounded: at ~0.01 s of search price per 1e-4
    # of budget the answer may move by a few 1e-4 within that rounding (seen once under CI's load: 0.0901 chosen,
    # 0.0908 by hand)
    assert largest(left - 0.05) - 1.5e-4 <= budget <= largest(left + 0.05) + 1.5e-4 and 0 < budget < 1
    assert _search_p90(budget_plan, 6, budget) <= left + 0.05 and "tune.budget" in gives["budget"].change
    md = render_plan_md(plan)
    assert "Before the runs, the learning-rate search (`tunelab tune`)" in md
    assert PlanOut.of(plan).deadline.search == d.search  # type: ignore[union-attr]


def test_a_searched_combination_is_not_counted_again(write_spec):
    spec = write_spec(factors={"lora_rank": [4, 8]}, tune=TUNE)
    write_best(spec.parent, {"lora_rank-8": TunedRate(combination="lora_rank-8", learning_rate=3e-4,
                                                      objective="val_loss", value=0.4, trial=2, trials=6)})
    plan = make_plan(spec, deadline="1d")
    d = plan.deadline
    assert d is not None and d.search is not None and d.search.searched == ["lora_rank-8"]
    left = next(c for c in plan.search if c.combination == "lora_rank-4")
    assert d.search.combinations == 1 and d.search.seconds == left.seconds
