"""The learning-rate search on the deadline's timeline: the combinations still to search priced by forecast/tunecost.py
and summed (they run before the sweep's runs); where the sweep does not fit, the largest trial count and budget fraction
whose search fits beside the runs' P90."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from tunelab.execute.schedule import RunNeed, cpu_devices, forecast
from tunelab.forecast.deadline import SEARCH_STEPS, GiveOption, SearchLine
from tunelab.forecast.evalrun import RunEvalPrediction
from tunelab.forecast.tunecost import SearchCost, search_cost, warm_start_s
from tunelab.rundir.config import RunConfig
from tunelab.rundir.estimate import RunEstimate
from tunelab.rundir.tuned import combination_runs
from tunelab.spec import ExperimentSpec

BUDGET_PLACES = 4  # a smaller budget is said to this many decimals


@dataclass(frozen=True)
class PendingSearch:
    """The combinations not searched yet, each with its trials' base run, estimate and evaluation."""

    combos: list[tuple[str, RunConfig, RunEstimate | None]]
    trials: int
    budget: float
    searched: list[str]
    evaluations: dict[str, RunEvalPrediction] = field(default_factory=dict)
    lanes: int = 1  # combinations searched side by side (tune/search.py: the CPU shares of the runs)
    warm_s: float = 0.0  # what a trial after its combination's first skips of its start-up (tunecost.warm_start_s)

    def costs(self, trials: int, budget: float) -> list[SearchCost]:
        return [search_cost(name, run, est, trials, budget, self.evaluations.get(name), self.warm_s)
                for name, run, est in self.combos]

    def p90(self, trials: int, budget: float) -> float | None:
        """The search's P90 with `trials` trials at `budget` (None: not predicted)."""
        return _summed(self.costs(trials, budget), self.lanes)[2]


def pending_search(spec: ExperimentSpec, runs: list[RunConfig], estimates: dict[str, RunEstimate],
                   evaluations: dict[str, RunEvalPrediction] | None = None, lanes: int = 1) -> PendingSearch | None:
    """The search still to run (None without `tune:`); a combination whose runs carry a tuned rate is done."""
    tune = spec.tune
    if tune is None:
        return None
    combos, searched = [], []
    for name, group in combination_runs(spec, runs).items():
        if group[0].tuned is not None:
            searched.append(name)
        else:
            combos.append((name, group[0], estimates.get(group[0].name)))
    return PendingSearch(combos, tune.trials, tune.budget, searched, evaluations or {}, max(1, min(lanes, len(combos))),
                         warm_start_s(spec))


def _summed(costs: list[SearchCost], lanes: int = 1) -> tuple[float | None, float | None, float | None]:
    """(P10, P50, P90) of the costs together, s (None: one is not predicted): placed over `lanes` as the executor
    places runs (execute/schedule.forecast, longest first), each quantile alike."""
    if any(c.seconds is None for c in costs):
        return None, None, None
    mids = [c.seconds or 0.0 for c in costs]
    lows = [c.time_range.p10_s if c.time_range else m for c, m in zip(costs, mids)]
    highs = [c.time_range.p90_s if c.time_range else m for c, m in zip(costs, mids)]
    return _placed(costs, lows, lanes), _placed(costs, mids, lanes), _placed(costs, highs, lanes)


def _placed(costs: list[SearchCost], seconds: list[float], lanes: int) -> float:
    needs = [RunNeed(c.combination, 1, s, None) for c, s in zip(costs, seconds)]
    return round(forecast(cpu_devices(lanes), needs).makespan_s or 0.0, 1)


def search_line(pending: PendingSearch) -> SearchLine:
    """The search as the timeline's first part."""
    costs = pending.costs(pending.trials, pending.budget)
    low, mid, high = _summed(costs, pending.lanes)
    missing = [c.combination for c in costs if c.seconds is None]
    source = (f"{len(costs)} combination(s) × {pending.trials} trials at budget {pending.budget:g}, priced as "
              "successive halving is expected to spend them (forecast/tunecost.py), one trial at a time"
              + (f" in each of {pending.lanes} combinations side by side" if pending.lanes > 1 else ""))
    if missing:
        source = f"not predicted: {', '.join(missing)} without a predicted time"
    return SearchLine(combinations=len(costs), trials=pending.trials, budget=pending.budget, seconds=mid,
                      p10_s=low, p90_s=high, source=source, searched=pending.searched)


def search_gives(pending: PendingSearch) -> Callable[[float, float], list[GiveOption]]:
    """The options the search offers: given the P90 time it may take and the runs' P90 makespan."""
    def gives(left_s: float, runs_p90: float) -> list[GiveOption]:
        return [g for g in (_fewer_trials(pending, left_s, runs_p90), _smaller_budget(pending, left_s, runs_p90))
                if g is not None]
    return gives


def _fewer_trials(pending: PendingSearch, left_s: float, runs_p90: float) -> GiveOption | None:
    """The most trials per combination (fewer than asked) whose search fits in `left_s` at P90."""
    for n in range(pending.trials - 1, 0, -1):
        p90 = pending.p90(n, pending.budget)
        if p90 is not None and p90 <= left_s:
            return GiveOption(what="trials", change=f"{n} trials per combination instead of {pending.trials} "
                              f"(tune.trials: {n})", makespan_s=round(runs_p90 + p90, 1))
    return None


def _smaller_budget(pending: PendingSearch, left_s: float, runs_p90: float) -> GiveOption | None:
    """The largest budget fraction (below the one asked) whose search fits in `left_s` at P90."""
    budget = largest_budget(pending, left_s)
    p90 = pending.p90(pending.trials, budget) if budget is not None else None
    if budget is None or p90 is None:
        return None
    return GiveOption(what="budget", change=f"trials train {budget:g} of a run's steps instead of "
                      f"{pending.budget:g} (tune.budget: {budget:g})", makespan_s=round(runs_p90 + p90, 1))


def _budget_edges(pending: PendingSearch) -> list[float]:
    """The budgets (to BUDGET_PLACES decimals) below the asked one where a trial's steps go up by one: between two,
    every trial trains the same steps and the same share of them, so the price grows with the budget."""
    unit = 10 ** BUDGET_PLACES
    edges = {1 / unit}
    for _, _, est in pending.combos:
        if est is not None and est.steps:
            top = math.floor(pending.budget * est.steps)
            edges |= {math.ceil(k / est.steps * unit) / unit for k in range(1, top + 1)}
    return sorted(e for e in edges if e < pending.budget)


def largest_budget(pending: PendingSearch, left_s: float) -> float | None:
    """The largest budget below the asked one whose search's P90 fits in `left_s`. The price is not monotone in the
    budget (a trial's rungs move with its steps), so each stretch of equal steps is tried from the top."""
    def fits(budget: float) -> bool:
        p90 = pending.p90(pending.trials, budget)
        return p90 is not None and p90 <= left_s

    edges = _budget_edges(pending) + [pending.budget]
    for lo, hi in reversed(list(zip(edges, edges[1:]))):
        if not fits(lo):
            continue
        for _ in range(SEARCH_STEPS):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        said = math.floor(lo * 10 ** BUDGET_PLACES) / 10 ** BUDGET_PLACES
        return said if fits(said) else lo
    return None
