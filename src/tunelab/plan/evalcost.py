"""What evaluating one run costs, for the deadline: every target (checkpoint) × task, from the samples, their
prompt and answer lengths as training formats them, max_tokens and the evaluation batch, priced by
`estimate/evaltime.py`'s `predict_eval_time` (measured generation speed from the probe and the history), plus
the evaluation job's start and model load.

Its seconds are on loaded weights; the evaluation job's start-up (process, imports, the model's load, a vLLM
server's start) is estimate/jobstart.py's `eval_start`, the one owner, as the prediction carries it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tunelab.catalog import GPU
from tunelab.ledger.predictions import PredictionRecord
from tunelab.estimate.evalrun import SplitRows, predict_run_eval
from tunelab.estimate.jobstart import JobStart
from tunelab.ledger.generation import GenerationRow
from tunelab.ledger.history import HistoryRun
from tunelab.rundir.config import RunConfig
from tunelab.rundir.estimate import RunEstimate, TimeRange


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


def eval_cost(cfg: RunConfig, gpu: GPU | None, history: list[HistoryRun], split_rows: SplitRows,
              estimate: RunEstimate | None, generation: Sequence[GenerationRow] | None = None,
              errors: Sequence[PredictionRecord] | None = None) -> EvalCost:
    """Every target × task of the run (estimate/evalrun.py, the prediction scaffold writes into run.yaml), with
    the evaluation job's start; None seconds when a task is unpriced (a task file's samples). `generation`: the
    history's generation speeds, `errors` its recorded prediction errors (None: read here)."""
    predicted = predict_run_eval(cfg, gpu, split_rows, history, generation, errors=errors, estimate=estimate)
    return EvalCost(predicted.seconds, predicted.detail, predicted.targets, len(cfg.eval.resolved_tasks()),
                    predicted.samples, predicted.start, predicted.range)


def model_estimate(cfg: RunConfig, runs: Sequence[RunConfig], estimates: dict[str, RunEstimate]
                   ) -> RunEstimate | None:
    """The training estimate a run's evaluation is priced with: its own, else a fine-tuned run's of the same model
    (a control or eval-only model generates at the speed, and starts as, a fine-tuned run of its model does)."""
    return estimates.get(cfg.name) or next((e for r in runs if r.model.path == cfg.model.path
                                            and (e := estimates.get(r.name)) is not None), None)
