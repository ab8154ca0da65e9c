"""The price of the learning-rate search (`tune:`) beside the sweep, per combination, as the pruner will spend it:

    trials × (start-up + share × budget × the rest of the run's training, less its calibration) − (trials − 1) × warm
    + finished × one trial's evaluation

Every trial is a job of its own; on the local executor a trial after its combination's first is forked from a process
that keeps the training stack imported (execute/warm_jobs.py), so it skips `warm`, the stack's import as the jobs
recorded it here (tunelab/jobimports.py; 0 before one is recorded, and on a scheduler, where each trial starts in
full). `share` is what successive halving lets a trial train (forecast/halving.py); `finished` trials are evaluated on
the objective's task. The interval is the run's, scaled."""

from __future__ import annotations

import math
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field

from tunelab.forecast.evalrun import RunEvalPrediction
from tunelab.forecast.halving import REDUCTION_FACTOR, expected_finished, spent_share, validation_interval
from tunelab.forecast.jobstart import warm_start_s as jobstart_warm_s
from tunelab.fsutil import human_seconds
from tunelab.rundir.config import RunConfig
from tunelab.rundir.estimate import RunEstimate, TimeRange
from tunelab.rundir.tuned import combination_runs
from tunelab.spec import ExperimentSpec
from tunelab.spec.tune import objective_task


class SearchCost(BaseModel):
    """One combination's search, priced (plan.md's learning-rate search, `plan --json`'s `search`)."""

    model_config = ConfigDict(extra="forbid")

    combination: str = Field(description="The combination's name (tune/<combination>/).")
    run: str = Field(description="The run its trials are derived from.")
    trials: int = Field(description="Trials of the search (tune.trials).")
    budget: float = Field(description="The fraction of the run's steps a trial trains at most (tune.budget).")
    steps_per_trial: int = Field(description="Optimizer steps a trial trains at most.")
    spent_share: float = Field(1.0, description="The share of a trial's budget successive halving is expected to "
                               "let it train (forecast/halving.py; 1.0: nothing pruned).")
    seconds: float | None = Field(description="trials × (start-up + spent_share × budget × the rest of the run's "
                                  "predicted training time), s (None: the run has no predicted time).")
    unpruned_s: float | None = Field(None, description="The same if every trial trained to its budget, s.")
    evaluated: float = Field(0.0, description="Trials expected to be evaluated: those that train their whole "
                             "budget (an eval task's metric as objective; 0: judged by validation loss).")
    eval_s: float | None = Field(None, description="One trial's evaluation job (its start and the objective's task on "
                                 "its last checkpoint), s (None: not evaluated, or not predicted).")
    time_range: TimeRange | None = Field(None, description="The same as an interval (the run's, scaled).")
    source: str = Field(description="How the price was made, in words.")


def _scaled(r: TimeRange | None, factor: float) -> TimeRange | None:
    if r is None:
        return None
    return TimeRange(p10_s=round(r.p10_s * factor, 1), p50_s=round(r.p50_s * factor, 1),
                     p90_s=round(r.p90_s * factor, 1), basis=r.basis)


def trial_eval_config(run: RunConfig, task: str) -> RunConfig:
    """What one trial's evaluation job evaluates, as a run: the objective's task on the last checkpoint."""
    tasks = [t for t in run.eval.resolved_tasks() if t.name == task]
    return run.model_copy(update={"eval": run.eval.model_copy(update={"tasks": tasks, "epochs": "last"}),
                                  "stages": []})


def trial_evaluations(spec: ExperimentSpec, runs: list[RunConfig], price: Callable[[RunConfig], RunEvalPrediction]
                      ) -> dict[str, RunEvalPrediction]:
    """One trial's evaluation per combination, priced by `price`; {} where the objective is the validation loss."""
    task = objective_task(spec.tune.objective, spec.eval) if spec.tune is not None else None
    if task is None:
        return {}
    return {name: price(trial_eval_config(group[0], task)) for name, group in combination_runs(spec, runs).items()}


def warm_start_s(spec: ExperimentSpec) -> float:
    """What a warm-started trial skips of its start-up (jobstart.warm_start_s): a lane's trials fork from one warm
    process on any device (tune/search.py; a sweep's GPU jobs start cold), so no GPU is passed."""
    return jobstart_warm_s(spec.resources.executor, None)


def search_costs(spec: ExperimentSpec, runs: list[RunConfig], estimates: dict[str, RunEstimate],
                 evaluations: dict[str, RunEvalPrediction] | None = None) -> list[SearchCost]:
    """Every combination's search priced ([] without `tune:`); `evaluations`: one trial's by combination."""
    tune = spec.tune
    if tune is None:
        return []
    warm = warm_start_s(spec)
    return [search_cost(name, group[0], estimates.get(group[0].name), tune.trials, tune.budget,
                        (evaluations or {}).get(name), warm) for name, group in combination_runs(spec, runs).items()]


def search_cost(combination: str, run: RunConfig, est: RunEstimate | None, trials: int, budget: float,
                evaluation: RunEvalPrediction | None = None, warm_s: float = 0.0) -> SearchCost:
    """One combination's search of `trials` at `budget`: the one formula the plan and the verdict price with
    (`warm_s`: what a trial after the first skips of its start-up, warm_start_s)."""
    every = run.training.validation_every_steps if run.training is not None else None
    steps = trial_steps(est, budget)
    interval = validation_interval(every, steps)
    share = spent_share(trials, steps, interval) if steps else 1.0
    seconds = search_seconds(est, trials, budget, share, warm_s) if est is not None else None
    unpruned = search_seconds(est, trials, budget, 1.0, warm_s) if est is not None else None
    factor = seconds / est.seconds if est is not None and seconds is not None and est.seconds else 0.0
    span = _scaled(est.time_range if est is not None else None, factor)
    finished = (expected_finished(trials, steps, interval) if steps else float(trials)) if evaluation else 0.0
    one = _one_evaluation(evaluation)
    if one is not None and seconds is not None:
        seconds, unpruned = seconds + finished * one.p50_s, (unpruned or 0.0) + trials * one.p50_s
        span = _plus(span, one, finished)
    return SearchCost(
        combination=combination, run=run.name, trials=trials, budget=budget, steps_per_trial=steps,
        spent_share=round(share, 4), seconds=round(seconds, 1) if seconds is not None else None,
        unpruned_s=round(unpruned, 1) if unpruned is not None else None, time_range=span,
        evaluated=round(finished, 3), eval_s=round(one.p50_s, 1) if one is not None else None,
        source=_source(run.name, est, trials, budget, share, bool(steps), warm_s) + _eval_source(evaluation, finished))


def _one_evaluation(evaluation: RunEvalPrediction | None) -> TimeRange | None:
    """One trial's evaluation job, start included, as an interval (None: none, or its task is not priced)."""
    if evaluation is None or evaluation.seconds is None:
        return None
    start = evaluation.start.range()
    gen = evaluation.range or TimeRange(p10_s=evaluation.seconds, p50_s=evaluation.seconds,
                                        p90_s=evaluation.seconds, basis="")
    return TimeRange(p10_s=start.p10_s + gen.p10_s, p50_s=evaluation.start_s + evaluation.seconds,
                     p90_s=start.p90_s + gen.p90_s, basis=gen.basis)


def _plus(span: TimeRange | None, one: TimeRange, times: float) -> TimeRange | None:
    if span is None:
        return None
    return TimeRange(p10_s=round(span.p10_s + times * one.p10_s, 1), p50_s=round(span.p50_s + times * one.p50_s, 1),
                     p90_s=round(span.p90_s + times * one.p90_s, 1), basis=span.basis)


def _source(run: str, est: RunEstimate | None, trials: int, budget: float, share: float, steps_known: bool,
            warm_s: float = 0.0) -> str:
    startup = est.startup_s if est is not None else None
    time = est.time_source if est is not None else "none"
    how = (f"{share:.0%} of the budgets trained: successive halving (η {REDUCTION_FACTOR}) stops the rest"
           if steps_known else "the run's steps are not known: priced as if every trial trained its budget")
    warm = (f" − {trials - 1} × {warm_s:.1f} s: the trials after the first forked from a process that imported the "
            "training stack once (its import as recorded here)" if warm_s and trials > 1 else "")
    calibration = (f", less its {est.finish_s:g} s step-cost calibration, which no trial takes"
                   if est is not None and est.finish_s else "")
    return (f"{trials} trials × (start-up {startup} s + {share:.2f} × {budget:g} × the rest of {run}'s predicted "
            f"training time{calibration} ({time})){warm}; {how}")


def _eval_source(evaluation: RunEvalPrediction | None, finished: float) -> str:
    if evaluation is None:
        return ""
    if evaluation.seconds is None:
        return f"; the {finished:.2f} trials expected to finish are each evaluated, not priced ({evaluation.detail})"
    return (f"; + {finished:.2f} trials expected to finish × one evaluation job ({human_seconds(evaluation.start_s)} "
            f"start, {human_seconds(evaluation.seconds)} on the objective's task: {evaluation.detail})")


def trial_steps(est: RunEstimate | None, budget: float) -> int:
    """The steps a trial trains at most (0: the run's steps are not predicted)."""
    return max(1, math.floor(budget * est.steps)) if est is not None and est.steps else 0


def search_seconds(est: RunEstimate, trials: int, budget: float, share: float = 1.0,
                   warm_s: float = 0.0) -> float | None:
    """trials × (start-up + share × budget × the training after it) − (trials − 1) × warm_s: each trial is a job of
    its own, the first starting in full, the others without `warm_s` of it (warm_start_s); `share` of its budget
    trained (1.0: every trial to its budget). The run's step-cost calibration after training (`finish_s`) is no
    trial's: a trial skips it (rundir/summary.calibrates_step_cost)."""
    if est.seconds is None:
        return None
    startup = min(est.startup_s or 0.0, est.seconds)
    training = max(0.0, est.seconds - startup - (est.finish_s or 0.0))
    return trials * (startup + share * budget * training) - max(0, trials - 1) * min(warm_s, startup)
