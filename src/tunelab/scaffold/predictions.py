"""What the plan predicts of each run beyond its training, recorded in run.yaml's estimate at scaffold so that
the jobs (the Slurm evaluation job's limit) and, after the sweep, the report's predicted-vs-measured check read
the very figures the plan showed: each run's evaluation (estimate/evalrun.py) and the sweep's makespan.

The makespan is the plan's forecast (plan/sweeptime.py `plan_forecast`: training, evaluation and every job's
start-up placed on the sweep's devices, with its P10–P90 interval) — the very one plan.md and the terminal print:
one computation. The runs alone: the report measures the sweep from its first job, and a learning-rate search's
trials are not its jobs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunelab.estimate.evalrun import predict_run_eval
from tunelab.ledger import generation, history, predictions
from tunelab.rundir.estimate import RunEstimate, TimeRange

if TYPE_CHECKING:
    from tunelab.plan.planner import Plan


def with_predictions(plan: Plan) -> dict[str, RunEstimate]:
    """Every run's estimate (a control's made for it) with its evaluation and the sweep's makespan."""
    from tunelab.plan.evalcost import model_estimate
    from tunelab.plan.planner import split_lengths

    past, gen, errors = history.load(), generation.load(), predictions.load()
    evals = {cfg.name: predict_run_eval(cfg, plan.gpu, split_lengths, past, gen, errors=errors,
                                        estimate=model_estimate(cfg, plan.runs, plan.estimates)) for cfg in plan.runs}
    span, source = _makespan(plan)
    out = {}
    for cfg in plan.runs:
        est = plan.estimates.get(cfg.name) or RunEstimate(run=cfg.name)
        out[cfg.name] = evals[cfg.name].into(est).model_copy(update={
            "makespan_s": span.p50_s if span else None, "makespan_range": span, "makespan_source": source})
    return out


def _makespan(plan: Plan) -> tuple[TimeRange | None, str]:
    from tunelab.plan.planner import split_lengths
    from tunelab.plan.sweeptime import Sweep, plan_forecast

    forecast = plan.forecast or plan_forecast(Sweep(plan.spec, plan.runs, plan.estimates, plan.gpu, plan.node,
                                                    levered=bool(plan.levers), spec_path=plan.spec_path),
                                              plan.deadline, split_lengths)
    if forecast.makespan_s is None or forecast.makespan_p10_s is None or forecast.makespan_p90_s is None:
        return None, "not predicted: " + "; ".join(forecast.unknown)
    span = TimeRange(p10_s=forecast.makespan_p10_s, p50_s=forecast.makespan_s, p90_s=forecast.makespan_p90_s,
                     basis="every run's parts at their P10 / P90, placed as the median is")
    return span, f"the sweep's forecast on {forecast.devices_source}"
