"""What the plan predicts of each run beyond its training, recorded in run.yaml's estimate at scaffold so that
the jobs (the Slurm evaluation job's limit) and, after the sweep, the report's predicted-vs-measured check read
the very figures the plan showed: each run's evaluation (estimate/evalrun.py) and the sweep's makespan.

The makespan is the deadline verdict's forecast (training and evaluation placed on the sweep's devices) when
the plan has one; else the local forecast of the trainings followed by every run's evaluation in turn (what
`tunelab run` then `tunelab eval` do here); under a scheduler without a deadline it is not predicted (a queue).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunelab.estimate.evalrun import RunEvalPrediction, predict_run_eval
from tunelab.ledger import generation, history
from tunelab.rundir.estimate import RunEstimate

if TYPE_CHECKING:
    from tunelab.plan.planner import Plan


def with_predictions(plan: Plan) -> dict[str, RunEstimate]:
    """Every run's estimate (a control's made for it) with its evaluation and the sweep's makespan."""
    from tunelab.plan.planner import split_lengths

    past, gen = history.load(), generation.load()
    evals = {cfg.name: predict_run_eval(cfg, plan.gpu, split_lengths, past, gen) for cfg in plan.runs}
    span, source = _makespan(plan, evals)
    out = {}
    for cfg in plan.runs:
        est = plan.estimates.get(cfg.name) or RunEstimate(run=cfg.name)
        out[cfg.name] = evals[cfg.name].into(est).model_copy(update={"makespan_s": span, "makespan_source": source})
    return out


def _makespan(plan: Plan, evals: dict[str, RunEvalPrediction]) -> tuple[float | None, str]:
    deadline = plan.deadline
    if deadline is not None and deadline.makespan_s is not None:
        return deadline.makespan_s, f"the deadline verdict's forecast on {deadline.devices_source}"
    if plan.schedule is None:
        return None, "not predicted: jobs wait in a scheduler's queue"
    totals = [e.total_s for e in evals.values()]
    if plan.schedule.makespan_s is None or None in totals:
        return None, "not predicted: a run's training or evaluation has no estimate"
    span = plan.schedule.makespan_s + sum(t or 0.0 for t in totals)
    return round(span, 1), "the local forecast of the trainings, then every run's evaluation in turn"
