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

from tunelab.catalog import GPU, Architecture, resolve_architecture
from tunelab.errors import TunelabError
from tunelab.estimate.interval import time_range
from tunelab.ledger.predictions import PredictionRecord
from tunelab.estimate.evalrun import SplitRows, predict_run_eval
from tunelab.estimate.runs import ASSUMED_STARTUP_S
from tunelab.ledger.generation import GenerationRow
from tunelab.ledger.history import HistoryRun
from tunelab.rundir.config import RunConfig
from tunelab.rundir.estimate import RunEstimate, SourceKind, TimeRange


@dataclass(frozen=True)
class EvalCost:
    """One run's evaluation: seconds (None: not predicted), where they came from, and what was counted."""

    seconds: float | None
    source: str
    targets: int
    tasks: int
    samples: int
    start: JobStart
    range: TimeRange | None = None  # the interval of `seconds`

    @property
    def start_s(self) -> float:
        return self.start.seconds

    @property
    def start_source(self) -> str:
        return self.start.source


@dataclass(frozen=True)
class JobStart:
    """A job's start and model load, its source in words and as a kind (what its interval's width rests on)."""

    seconds: float
    source: str
    kind: SourceKind

    def range(self) -> TimeRange:
        return time_range(self.seconds, self.kind, what="job start")


def eval_cost(cfg: RunConfig, gpu: GPU | None, history: list[HistoryRun], split_rows: SplitRows,
              estimate: RunEstimate | None, generation: Sequence[GenerationRow] | None = None,
              errors: Sequence[PredictionRecord] | None = None) -> EvalCost:
    """Every target × task of the run (estimate/evalrun.py, the prediction scaffold writes into run.yaml), with
    the evaluation job's start; None seconds when a task is unpriced (a task file's samples). `generation`: the
    history's generation speeds, `errors` its recorded prediction errors (None: read here)."""
    predicted = predict_run_eval(cfg, gpu, split_rows, history, generation, errors=errors)
    return EvalCost(predicted.seconds, predicted.detail, predicted.targets, len(cfg.eval.resolved_tasks()),
                    predicted.samples, job_start(cfg, estimate, history, gpu), predicted.range)


def job_start(cfg: RunConfig, estimate: RunEstimate | None, history: list[HistoryRun], gpu: GPU | None) -> JobStart:
    """A job's start and model load: the run's measured start-up, else the median of past runs' of this model on
    this kind of device (history), else of other models' there (a larger model loads longer: as wide as an
    assumption), else assumed."""
    if estimate is not None and estimate.startup_s is not None and estimate.startup_kind \
            and estimate.startup_kind != SourceKind.ASSUMED:
        return JobStart(estimate.startup_s, "the run's measured start-up (history)", SourceKind(estimate.startup_kind))
    stem = gpu.name.split("-")[0].lower() if gpu is not None else "cpu"
    here = [r for r in history if r.startup_s is not None and
            (r.device or "").lower().replace(" ", "").find(stem) >= 0]
    arch = _architecture(cfg.model.path)
    same = sorted(r.startup_s or 0.0 for r in here if arch is not None
                  and (r.layers, r.hidden, r.parameters) == (arch.layers, arch.hidden, arch.parameters))
    if same:
        return JobStart(same[len(same) // 2], f"history: median start-up of {len(same)} past run(s) of this model "
                        f"on {stem}", SourceKind.MEASURED)
    seen = sorted(r.startup_s or 0.0 for r in here)
    if seen:
        return JobStart(seen[len(seen) // 2], f"history: median start-up of {len(seen)} past run(s) of other "
                        f"models on {stem} (this model's load not measured: width as assumed)", SourceKind.ASSUMED)
    return JobStart(ASSUMED_STARTUP_S, f"{ASSUMED_STARTUP_S:.0f} s (assumed)", SourceKind.ASSUMED)


def _architecture(path: str) -> Architecture | None:
    try:
        return resolve_architecture(path)
    except (TunelabError, OSError, ValueError):
        return None
