"""The price of the learning-rate search (`tune:`) beside the sweep: per combination, its trials × (the start-up
every trial pays in full + the budget fraction of the rest of the predicted training time of the run its trials are
derived from), as an interval. An upper bound: a pruned trial stops before its budget, and how many the pruner
stops is not known before they train."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from tunelab.fsutil import human_seconds
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
    seconds: float | None = Field(description="trials × (start-up + budget × the rest of the run's predicted "
                                  "training time), s (None: the run has no predicted time).")
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
    out = []
    for name, group in combination_runs(spec, runs).items():
        run = group[0]
        est = estimates.get(run.name)
        seconds = search_seconds(est, tune.trials, tune.budget) if est is not None else None
        factor = seconds / est.seconds if est is not None and seconds is not None and est.seconds else 0.0
        steps = max(1, math.floor(tune.budget * est.steps)) if est is not None and est.steps else 0
        out.append(SearchCost(
            combination=name, run=run.name, trials=tune.trials, budget=tune.budget, steps_per_trial=steps,
            seconds=round(seconds, 1) if seconds is not None else None,
            time_range=_scaled(est.time_range if est is not None else None, factor),
            source=f"{tune.trials} trials × (start-up {est.startup_s if est is not None else None} s + {tune.budget:g} "
                   f"× the rest of {run.name}'s predicted training time ({est.time_source if est is not None else 'none'}"
                   "); an upper bound: pruned trials stop early"))
    return out


def search_seconds(est: RunEstimate, trials: int, budget: float) -> float | None:
    """trials × (start-up + budget × the training after it): each trial is a job of its own and starts in full."""
    if est.seconds is None:
        return None
    startup = min(est.startup_s or 0.0, est.seconds)
    return trials * (startup + budget * (est.seconds - startup))


def search_lines(costs: list[SearchCost]) -> list[str]:
    """plan.md's section: a row per combination and the total."""
    if not costs:
        return []
    lines = ["## Learning-rate search", "",
             "Each combination's runs train at the rate its search finds (`tunelab tune`); priced here as every "
             "trial running to its budget (pruned trials stop earlier).", "",
             "| Combination | From run | Trials | Budget | Steps per trial | Time (P10–P90) |", "|---|---|---|---|---|---|"]
    for c in costs:
        time = c.time_range.text() if c.time_range else (human_seconds(c.seconds) if c.seconds is not None else "—")
        lines.append(f"| {c.combination} | {c.run} | {c.trials} | {c.budget:g} | {c.steps_per_trial} | {time} |")
    return lines + ["", f"**Search total:** {search_summary(costs)}", ""]


def search_summary(costs: list[SearchCost]) -> str:
    """The whole search in words: its combinations, trials and total time (one trial at a time, before the sweep)."""
    trials = sum(c.trials for c in costs)
    known = [c.seconds for c in costs if c.seconds is not None]
    total = human_seconds(sum(known)) if len(known) == len(costs) else "not predicted (a run has no predicted time)"
    return (f"{len(costs)} combination(s), {trials} trials: {total} if every trial trains to its budget (pruned "
            "ones stop earlier), one trial at a time, before the sweep")
