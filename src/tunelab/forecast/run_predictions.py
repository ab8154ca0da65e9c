"""What the plan predicts of each run beyond its training, recorded in run.yaml's estimate at scaffold so that
the jobs (the Slurm evaluation job's limit) and, after the sweep, the report's predicted-vs-measured check read
the very figures the plan showed: each run's evaluation (forecast/evalrun.py, predicted once by the plan's
`predict_sweep`) and the sweep's makespan — the plan's forecast (forecast/sweeptime.py `plan_forecast`: training,
evaluation and every job's start-up placed on the sweep's devices, with its P10–P90 interval), the very one
plan.md and the terminal print. The runs alone: the report measures the sweep from its first job, and a
learning-rate search's trials are not its jobs.
"""

from __future__ import annotations

from collections.abc import Sequence

from tunelab.forecast.deadline import DeadlinePlan
from tunelab.forecast.evalrun import RunEvalPrediction
from tunelab.rundir.config import RunConfig
from tunelab.rundir.estimate import RunEstimate, TimeRange


def recorded_estimates(runs: Sequence[RunConfig], estimates: dict[str, RunEstimate],
                       evaluations: dict[str, RunEvalPrediction], forecast: DeadlinePlan | None
                       ) -> dict[str, RunEstimate]:
    """Every run's estimate (a control's made for it) with its evaluation and the sweep's makespan."""
    span, source = _makespan(forecast)
    return {cfg.name: evaluations[cfg.name].into(estimates.get(cfg.name) or RunEstimate(run=cfg.name)).model_copy(
        update={"makespan_s": span.p50_s if span else None, "makespan_range": span, "makespan_source": source})
        for cfg in runs}


def _makespan(forecast: DeadlinePlan | None) -> tuple[TimeRange | None, str]:
    if forecast is None:
        return None, "not predicted: the plan made no estimates"
    if forecast.makespan_s is None or forecast.makespan_p10_s is None or forecast.makespan_p90_s is None:
        return None, "not predicted: " + "; ".join(forecast.unknown)
    span = TimeRange(p10_s=forecast.makespan_p10_s, p50_s=forecast.makespan_s, p90_s=forecast.makespan_p90_s,
                     basis="every run's parts at their P10 / P90, placed as the median is")
    return span, f"the sweep's forecast on {forecast.devices_source}"
