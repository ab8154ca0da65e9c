"""What evaluating one run costs, for the deadline: every target (checkpoint) × task, from the samples, their
prompt and answer lengths as training formats them, max_tokens and the evaluation batch, priced by
`estimate/evaltime.py`'s `predict_eval_time` (measured generation speed from the probe and the history), plus
the evaluation job's start and model load.

Its seconds are on loaded weights; the evaluation job's start and the model's load are `job_start`'s (the
run's measured start-up, else the history's on this device, else assumed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tunelab.catalog import GPU
from tunelab.estimate.evalrun import SplitRows, predict_run_eval
from tunelab.estimate.runs import ASSUMED_STARTUP_S
from tunelab.ledger.generation import GenerationRow
from tunelab.ledger.history import HistoryRun
from tunelab.rundir.config import RunConfig
from tunelab.rundir.estimate import RunEstimate



@dataclass(frozen=True)
class EvalCost:
    """One run's evaluation: seconds (None: not predicted), where they came from, and what was counted."""

    seconds: float | None
    source: str
    targets: int
    tasks: int
    samples: int
    start_s: float
    start_source: str


def eval_cost(cfg: RunConfig, gpu: GPU | None, history: list[HistoryRun], split_rows: SplitRows,
              estimate: RunEstimate | None, generation: Sequence[GenerationRow] | None = None) -> EvalCost:
    """Every target × task of the run (estimate/evalrun.py, the prediction scaffold writes into run.yaml), with
    the evaluation job's start; None seconds when a task is unpriced (a task file's samples). `generation`: the
    history's generation speeds (None: read here)."""
    predicted = predict_run_eval(cfg, gpu, split_rows, history, generation)
    return EvalCost(predicted.seconds, predicted.detail, predicted.targets, len(cfg.eval.resolved_tasks()),
                    predicted.samples, *job_start(estimate, history, gpu))


def job_start(estimate: RunEstimate | None, history: list[HistoryRun], gpu: GPU | None) -> tuple[float, str]:
    """A job's start and model load: the run's measured start-up, else the median of past runs' on this kind of
    device (history), else assumed."""
    if estimate is not None and estimate.startup_s is not None and "start-up (assumed)" not in estimate.time_source:
        return estimate.startup_s, "the run's measured start-up (history)"
    stem = gpu.name.split("-")[0].lower() if gpu is not None else "cpu"
    seen = sorted(r.startup_s for r in history if r.startup_s is not None and
                  (r.device or "").lower().replace(" ", "").find(stem) >= 0)
    if seen:
        return seen[len(seen) // 2], f"history: median start-up of {len(seen)} past run(s) on {stem}"
    return ASSUMED_STARTUP_S, f"{ASSUMED_STARTUP_S:.0f} s (assumed)"
