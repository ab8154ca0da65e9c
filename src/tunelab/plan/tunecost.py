"""The price of the learning-rate search (`tune:`) beside the sweep: per combination, as the pruner will spend it —

    trials × (start-up + share × budget × the rest of the run's predicted training time)

where every trial is a job of its own and pays its start-up in full, and `share` is the part of its budget a trial
is expected to train once successive halving has stopped the ones it stops (plan/halving.py: Optuna's rule over
rungs r, r·η, r·η², … with r the trials' validation interval, averaged over the orders the trials' quality may
come in). The interval is the run's, scaled by the same factor.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from tunelab.fsutil import human_seconds
from tunelab.plan.halving import REDUCTION_FACTOR, spent_share, validation_interval
from tunelab.plan.tuned import combination_runs
from tunelab.rundir.config import RunConfig
from tunelab.rundir.estimate import RunEstimate, TimeRange
from tunelab.spec import ExperimentSpec


class SearchCost(BaseModel):
    """One combination's search, priced (plan.md's learning-rate search, `plan --json`'s `search`)."""

    model_config = ConfigDict(extra="forbid")

    combination: str = Field(description="The combination's name (tune/<combination>/).")
    run: str = Field(description="The run its trials are derived from.")
    trials: int = Field(description="Trials of the search (tune.trials).")
    budget: float = Field(description="The fraction of the run's steps a trial trains at most (tune.budget).")
    steps_per_trial: int = Field(description="Optimizer steps a trial trains at most.")
    spent_share: float = Field(1.0, description="The share of a trial's budget successive halving is expected to "
                               "let it train (plan/halving.py; 1.0: nothing pruned).")
    seconds: float | None = Field(description="trials × (start-up + spent_share × budget × the rest of the run's "
                                  "predicted training time), s (None: the run has no predicted time).")
    unpruned_s: float | None = Field(None, description="The same if every trial trained to its budget, s.")
    time_range: TimeRange | None = Field(None, description="The same as an interval (the run's, scaled).")
    source: str = Field(description="How the price was made, in words.")


def _scaled(r: TimeRange | None, factor: float) -> TimeRange | None:
    if r is None:
        return None
    return TimeRange(p10_s=round(r.p10_s * factor, 1), p50_s=round(r.p50_s * factor, 1),
                     p90_s=round(r.p90_s * factor, 1), basis=r.basis)


def search_costs(spec: ExperimentSpec, runs: list[RunConfig], estimates: dict[str, RunEstimate]) -> list[SearchCost]:
    """Every combination's search priced ([] without `tune:`)."""
    tune = spec.tune
    if tune is None:
        return []
    return [search_cost(name, group[0], estimates.get(group[0].name), tune.trials, tune.budget)
            for name, group in combination_runs(spec, runs).items()]


def search_cost(combination: str, run: RunConfig, est: RunEstimate | None, trials: int, budget: float) -> SearchCost:
    """One combination's search of `trials` trials at `budget`: the one formula the plan, the deadline verdict and
    its fewer-trials or smaller-budget options all price with."""
    every = run.training.validation_every_steps if run.training is not None else None
    steps = trial_steps(est, budget)
    share = spent_share(trials, steps, validation_interval(every, steps)) if steps else 1.0
    seconds = search_seconds(est, trials, budget, share) if est is not None else None
    unpruned = search_seconds(est, trials, budget) if est is not None else None
    factor = seconds / est.seconds if est is not None and seconds is not None and est.seconds else 0.0
    return SearchCost(
        combination=combination, run=run.name, trials=trials, budget=budget, steps_per_trial=steps,
        spent_share=round(share, 4), seconds=round(seconds, 1) if seconds is not None else None,
        unpruned_s=round(unpruned, 1) if unpruned is not None else None,
        time_range=_scaled(est.time_range if est is not None else None, factor),
        source=_source(run.name, est, trials, budget, share, bool(steps)))


def _source(run: str, est: RunEstimate | None, trials: int, budget: float, share: float, steps_known: bool) -> str:
    startup = est.startup_s if est is not None else None
    time = est.time_source if est is not None else "none"
    how = (f"{share:.0%} of the budgets trained: successive halving (η {REDUCTION_FACTOR}) stops the rest"
           if steps_known else "the run's steps are not known: priced as if every trial trained its budget")
    return (f"{trials} trials × (start-up {startup} s + {share:.2f} × {budget:g} × the rest of {run}'s predicted "
            f"training time ({time})); {how}")


def trial_steps(est: RunEstimate | None, budget: float) -> int:
    """The steps a trial trains at most (0: the run's steps are not predicted)."""
    return max(1, math.floor(budget * est.steps)) if est is not None and est.steps else 0


def search_seconds(est: RunEstimate, trials: int, budget: float, share: float = 1.0) -> float | None:
    """trials × (start-up + share × budget × the training after it): each trial is a job of its own and starts in
    full; `share` of its budget trained (1.0: every trial to its budget)."""
    if est.seconds is None:
        return None
    startup = min(est.startup_s or 0.0, est.seconds)
    return trials * (startup + share * budget * (est.seconds - startup))


def search_lines(costs: list[SearchCost]) -> list[str]:
    """plan.md's section: a row per combination and the total."""
    if not costs:
        return []
    lines = ["## Learning-rate search", "",
             "Each combination's runs train at the rate its search finds (`tunelab tune`); priced as the pruner will "
             "spend it: each trial's start-up in full, and the share of its budget successive halving is expected to "
             "let it train.", "",
             "| Combination | From run | Trials | Budget | Steps per trial | Share trained | Time (P10–P90) "
             "| Every trial to its budget |", "|---|---|---|---|---|---|---|---|"]
    for c in costs:
        time = c.time_range.text() if c.time_range else (human_seconds(c.seconds) if c.seconds is not None else "—")
        full = human_seconds(c.unpruned_s) if c.unpruned_s is not None else "—"
        lines.append(f"| {c.combination} | {c.run} | {c.trials} | {c.budget:g} | {c.steps_per_trial} "
                     f"| {c.spent_share:.0%} | {time} | {full} |")
    return lines + ["", f"**Search total:** {search_summary(costs)}", ""]


def search_summary(costs: list[SearchCost]) -> str:
    """The whole search in words: its combinations, trials and total time (one trial at a time, before the sweep)."""
    trials = sum(c.trials for c in costs)
    known = [c.seconds for c in costs if c.seconds is not None]
    total = human_seconds(sum(known)) if len(known) == len(costs) else "not predicted (a run has no predicted time)"
    return (f"{len(costs)} combination(s), {trials} trials: {total} as successive halving is expected to spend it, "
            "one trial at a time, before the sweep")
