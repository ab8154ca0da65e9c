"""A run's evaluation, predicted: every target × task priced by forecast/evaltime.py and summed, with the evaluation
job's start-up (forecast/jobstart.py) and a Slurm limit from the worst case (every batch decoding to max_tokens) × its
weakest source's margin. Scaffold writes it into run.yaml's estimate.

A task file's samples are not known before it runs, so a run with one is not predicted (said so). A checkpoint evaluated
alone takes the loop it would take in a pass (spec/evaluation.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tunelab.catalog import GPU
from tunelab.forecast.evaltime import EVAL_TIME_MARGINS, EvalSource, eval_time_limit, predict_eval_time
from tunelab.forecast.interval import ranged_eval
from tunelab.forecast.jobstart import JobStart, eval_start
from tunelab.forecast.speedhistory import device_key
from tunelab.ledger import predictions
from tunelab.ledger.generation import GenerationRow, load
from tunelab.ledger.history import HistoryRun
from tunelab.ledger.predictions import PredictionRecord
from tunelab.models.vlm import is_vision_language
from tunelab.rundir.config import RunConfig
from tunelab.rundir.estimate import RunEstimate, TimeRange
from tunelab.spec.evaluation import Engine, EvalLoop, evaluation_loop

SplitRows = Callable[[RunConfig], dict[str, tuple[tuple[int, int], ...]]]  # (tokens, answer position) per row
EVAL_BATCH = 16  # evaluation's default batch (evaluate/provider.py DEFAULT_BATCH_SIZE)
_RANK = {EvalSource.HISTORY: 0, EvalSource.PROBED: 1, EvalSource.ASSUMED: 2}


@dataclass(frozen=True)
class RunEvalPrediction:
    """Every target × task of one run: seconds on loaded weights, start-up, loads, worst case, sources."""

    seconds: float | None  # None: a task's samples unknown (a task file)
    start: JobStart  # the evaluation job's start-up (forecast/jobstart.py), once: what the makespan adds
    load_s: float  # the start-up once per target (HF) or once (vLLM): the limit's worst case
    upper_s: float | None  # loads + every batch to max_tokens
    source: EvalSource | None  # the weakest source of its tasks
    detail: str
    targets: int
    samples: int = 0  # samples of one target, every task
    raw_seconds: float | None = None  # before the source's recorded errors corrected it
    range: TimeRange | None = None  # the interval of `seconds`

    @property
    def start_s(self) -> float:
        return self.start.seconds

    @property
    def total_s(self) -> float | None:
        return None if self.seconds is None else round(self.seconds + self.load_s, 3)

    def into(self, est: RunEstimate) -> RunEstimate:
        """The estimate with the prediction in its eval_* fields (a copy)."""
        known = self.upper_s is not None and self.source is not None
        limit = eval_time_limit(self.upper_s or 0.0, self.source or EvalSource.ASSUMED) if known else None
        return est.model_copy(update=dict(
            eval_seconds=self.seconds, eval_load_s=self.load_s, eval_upper_s=self.upper_s,
            eval_targets=self.targets if self.seconds is not None else None,
            eval_samples=self.samples if self.seconds is not None else None,
            eval_source=self.source.value if self.source else "", eval_time_source=self.detail,
            eval_slurm_time_limit=limit, eval_raw_s=self.raw_seconds, eval_range=self.range))


def eval_targets(cfg: RunConfig) -> int:
    """Checkpoints evaluated: the last, every epoch, the listed ones, or each stage's last (one for a control)."""
    if cfg.kind != "finetune":
        return 1
    epochs = cfg.eval.epochs
    if isinstance(epochs, list):
        return len(epochs)
    if epochs == "all":
        return sum(t.epochs for t in cfg.trainings())
    return max(1, len(cfg.stages)) if epochs == "stages" else 1


def predict_run_eval(cfg: RunConfig, gpu: GPU | None, split_rows: SplitRows, history: Sequence[HistoryRun] = (),
                     generation: Sequence[GenerationRow] | None = None, batch_size: int = EVAL_BATCH,
                     errors: Sequence[PredictionRecord] | None = None,
                     estimate: RunEstimate | None = None) -> RunEvalPrediction:
    """The run's evaluation, each task once per target, corrected by its source's errors here, with its interval."""
    if generation is None:
        generation = load()
    if errors is None:
        errors = predictions.load()
    targets = eval_targets(cfg)
    engine = cfg.eval.planned_engine(gpu is not None)
    start = eval_start(cfg.model.path, gpu, history, engine, estimate)
    # engine vllm: the run's checkpoints are resident adapters of one server, their rows batched together: priced as
    # one workload of every target's samples, the server started once
    together = min(targets, cfg.eval.vllm.max_loras or targets) if engine == Engine.VLLM else 1
    vision = is_vision_language(cfg.model.path)  # with the engine and the task: the loop it takes (spec/evaluation.py)
    seconds = upper = load_s = 0.0
    samples = 0
    sources: list[EvalSource] = []
    details: list[str] = []
    for task in cfg.eval.resolved_tasks():
        if task.builtin is None:
            return RunEvalPrediction(None, start, 0.0, None, None, f"task {task.name}: a task file's samples are "
                                     "not known before it runs", targets)
        on = cfg.model_copy(update={"dataset": cfg.dataset_named(task.dataset)})
        rows = split_rows(on).get(task.split, ())
        limit = task.limit or cfg.eval.limit
        rows = rows[:limit] if limit else rows
        samples += len(rows)
        got = predict_eval_time(
            model=cfg.model.path, gpu=gpu, samples=len(rows) * together, prompt_tokens=[a for _, a in rows] * together,
            answer_tokens=[max(0, n - a) for n, a in rows] * together, max_tokens=task.max_tokens or cfg.eval.max_tokens,
            batch_size=batch_size * together, history=history, task=task.name, generation=generation, engine=engine,
            batched=evaluation_loop(task, engine=engine, vision=vision).loop == EvalLoop.TUNELAB)
        seconds += got.seconds * targets / together
        upper += got.upper_s * targets / together
        loads = 1 if engine == Engine.VLLM else targets  # HF: one load per target serves every task; vLLM: one server
        load_s = start.seconds * loads
        sources.append(got.source)
        details.append(f"{task.name}: {got.detail}")
    weakest = max(sources, key=lambda s: _RANK[s]) if sources else None
    margin = EVAL_TIME_MARGINS[weakest] if weakest else None
    detail = "; ".join(dict.fromkeys(details)) + (f" (limit: worst case × {margin:g} + 5 min)" if margin else "")
    if batch_size == EVAL_BATCH:
        detail += f"; batches of {EVAL_BATCH} (evaluation's default)"
    raw, span = round(seconds, 3), None
    if weakest is not None and seconds > 0:
        seconds, span, note = ranged_eval(seconds, weakest.value, errors, device_key(gpu))
        detail += f"; {note}" if note else ""
    return RunEvalPrediction(round(seconds, 3), start, round(load_s, 3), round(upper + load_s, 3), weakest, detail,
                             targets, samples, raw, span)


def model_estimate(cfg: RunConfig, runs: Sequence[RunConfig], estimates: dict[str, RunEstimate]) -> RunEstimate | None:
    """The training estimate a run's evaluation is priced with: its own, else a fine-tuned run's of the same model
    (a control or eval-only model generates at the speed, and starts as, a fine-tuned run of its model does)."""
    return estimates.get(cfg.name) or next((e for r in runs if r.model.path == cfg.model.path
                                            and (e := estimates.get(r.name)) is not None), None)
