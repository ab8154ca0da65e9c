"""The deadline verdict with a learning-rate search: the search's priced time comes before the runs (at P10, P50
and P90), the verdict includes it, and where the sweep does not fit, what would have to give may be fewer trials
or a smaller budget fraction — the largest that fit at P90, checked here against the price computed by hand.

Every plan here prices the runs from one history row set here (a fixed + per-token step cost, start-up, overhead
and finish of the tiny model on this CPU): nothing is timed on this machine (the CPU timings are made to fail), so
each plan of a spec gives the same estimates, however loaded the machine, and the hand prices are exact."""

from __future__ import annotations

import math

import pytest

from tunelab.execute.schedule import Device
from tunelab.forecast.deadline import DeadlineVerdict, RunTimeline, SearchLine, judge
from tunelab.forecast.halving import spent_share
from tunelab.forecast.sweeptime import Sweep, sweep_forecast
from tunelab.ledger import history
from tunelab.mcp.models import PlanOut
from tunelab.plan.markdown import render_plan_md
from tunelab.plan.planner import make_plan, split_lengths
from tunelab.rundir.tuned import TunedRate, write_best

TUNE = {"learning_rate": {"low": 1e-4, "high": 1e-2}, "per": ["lora_rank"], "trials": 6, "budget": 0.25}
FIXED_S, PER_TOKEN_S, TOKENS_PER_STEP = 0.05, 2e-4, 216.0  # the row's step: 0.05 s + 216 tokens × 0.2 ms


def _not_timed(*args, **kwargs):
    raise AssertionError("the plan timed this CPU: its estimates must rest on the history row set here")


@pytest.fixture(autouse=True)
def fresh_history(tmp_path, monkeypatch, tiny_model):
    """A history of this test's own holding one measured row of the tiny model on this CPU (any thread count), and
    the CPU timings a plan falls back on without one made to fail: the plans price from the row alone."""
    from tunelab.catalog import resolve_architecture
    from tunelab.forecast import cpuspeed

    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    # one thread, as each of `make test`'s two workers has: tunelab's own count would fit the load others hold while
    # each plan is made (host/adapt.py), and a neighbour's load then priced two plans of the same inputs apart
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("TUNELAB_OMP_NUM_THREADS", raising=False)
    for name in ("timed_cpu_speed", "cpu_flops", "timed_startup"):
        monkeypatch.setattr(cpuspeed, name, _not_timed)
    arch = resolve_architecture(tiny_model)
    history.record([history.HistoryRun(
        key="calibration", source="tunelab", origin="measured", model="tiny", layers=arch.layers, hidden=arch.hidden,
        parameters=arch.parameters, device="cpu", cpu_threads=None, packed=False, batch_size=8,
        gradient_accumulation_steps=1, max_seq_len=64, lora_rank=8, tokens_per_step=TOKENS_PER_STEP,
        tokens_per_s=TOKENS_PER_STEP / (FIXED_S + TOKENS_PER_STEP * PER_TOKEN_S), per_token_s=PER_TOKEN_S,
        step_fixed_s=FIXED_S, steps=40, duration_s=12.0, train_time_s=10.0, overhead_s=1.0, startup_s=6.0,
        finish_s=0.5, gradient_checkpointing=False, contended=False, slowdown=1.0)])


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
    """The search's P90 by hand: per combination trials × (start-up + share × budget × rest), scaled to the run's P90;
    the rest less the run's step-cost calibration, which no trial takes."""
    total = 0.0
    for cost in plan.search:
        est = plan.estimates[cost.run]
        steps = max(1, math.floor(budget * est.steps))
        share = spent_share(trials, steps, max(1, steps // 4))
        seconds = trials * (est.startup_s + share * budget * (est.seconds - est.startup_s - (est.finish_s or 0.0)))
        total += round(est.time_range.p90_s * seconds / est.seconds, 1)
    return total


def _runs(plan):
    """The runs' own forecast of a plan (without the search)."""
    return sweep_forecast(Sweep(plan.spec, plan.runs, plan.estimates, plan.gpu, plan.node, levered=bool(plan.levers)),
                          split_lengths)


def _check_rests_on_the_row(plan) -> None:
    """Every run priced from the row by the history rule, worked out here: micro-batch 8 (the fixed part is paid per
    micro-batch: the levers keep the effective batch whole), 216 tokens a step (27-token examples, like the row's:
    FLOPs per token ×1), the row's step cost, start-up, overhead share and finish."""
    for name in ("tiny_r4", "tiny_r8"):
        est = plan.estimates[name]
        assert (est.micro_batch, est.gradient_accumulation_steps) == (8, 1), name
        assert est.time_source.startswith("history: 1 measured run(s) of this model on cpu"), est.time_source
        tps = TOKENS_PER_STEP / (FIXED_S + PER_TOKEN_S * TOKENS_PER_STEP)
        assert est.train_tokens == est.steps * TOKENS_PER_STEP and est.tokens_per_s == round(tps, 1)
        assert est.seconds_raw == round(6.0 + est.train_tokens / tps * (1 + 1.0 / 10.0) + 0.5, 1)
        assert est.startup_s == 6.0


def test_a_plan_with_a_search_and_a_deadline_counts_it_and_names_fewer_trials_or_a_smaller_budget(write_spec):
    spec = write_spec(factors={"lora_rank": [4, 8]}, tune=TUNE)
    plan = make_plan(spec, deadline="1d")
    _check_rests_on_the_row(plan)
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
    tight_plan = make_plan(spec, deadline=f"{seconds}s")
    # the same inputs, the same estimates: the levers' choices and every price of the first plan
    assert tight_plan.estimates == plan.estimates and tight_plan.levers == plan.levers
    assert _runs(tight_plan) == runs
    tight = tight_plan.deadline
    assert tight is not None and tight.verdict in (DeadlineVerdict.DOES_NOT_FIT, DeadlineVerdict.FITS_P50)
    gives = {g.what: g for g in tight.gives}
    assert gives["trials"].change.startswith("3 trials per combination instead of 6")
    assert gives["trials"].makespan_s == pytest.approx(runs.makespan_p90_s + _search_p90(plan, 3, 0.25), abs=0.15)
    # every trial's start-up is paid in full: a smaller budget saves less; room for 6 trials at a budget of 0.15
    seconds = math.floor(runs.makespan_p90_s + (_search_p90(plan, 6, 0.15) + _search_p90(plan, 6, 0.16)) / 2)
    budget_plan = make_plan(spec, deadline=f"{seconds}s")
    assert budget_plan.estimates == plan.estimates
    gives = {g.what: g for g in budget_plan.deadline.gives}  # type: ignore[union-attr]
    budget = float(gives["budget"].change.split(" of a run's steps")[0].split()[-1])
    left = seconds - runs.makespan_p90_s

    def largest(room: float) -> float:
        """The price is not monotone in the budget (a trial's rungs move as it gains a step): every budget tried by
        hand (not necessarily near 0.15: a larger budget far below may fit too)."""
        return max(b / 1e4 for b in range(1, 2500) if _search_p90(plan, 6, b / 1e4) <= room)
    # the runs' P90 is known here to its rounded 0.1 s, the plan uses it unrounded: the answer may move within that
    # rounding (at ~0.01 s of search price per 1e-4 of budget, by a few 1e-4)
    assert largest(left - 0.05) <= budget <= largest(left + 0.05) and 0 < budget < 1
    assert _search_p90(plan, 6, budget) <= left + 0.05 and "tune.budget" in gives["budget"].change
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
