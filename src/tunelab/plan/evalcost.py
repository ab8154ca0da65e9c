"""What evaluating one run costs, for the deadline: every target (checkpoint) × task, from the samples, their
prompt and answer lengths as training formats them, max_tokens and the evaluation batch, priced by
`estimate/evaltime.py`'s `predict_eval_time` (measured generation speed from the probe and the history), plus
the evaluation job's start and model load.

Its seconds are on loaded weights; the evaluation job's start and the model's load are `job_start`'s (the
run's measured start-up, else the history's on this device, else assumed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tunelab.catalog import GPU
from tunelab.estimate.evaltime import predict_eval_time
from tunelab.estimate.runs import ASSUMED_STARTUP_S
from tunelab.ledger.history import HistoryRun
from tunelab.rundir.config import RunConfig
from tunelab.rundir.estimate import RunEstimate
from tunelab.spec import TaskSpec

EVAL_BATCH = 16  # evaluation's batch (evaluate/provider.py DEFAULT_BATCH_SIZE)

SplitRows = Callable[[RunConfig], dict[str, tuple[tuple[int, int], ...]]]  # plan.planner.split_lengths


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


def eval_targets(cfg: RunConfig) -> int:
    """Checkpoints evaluated: the last, every epoch, the listed epochs, or each stage's last."""
    if cfg.kind != "finetune":
        return 1
    epochs = cfg.eval.epochs
    if isinstance(epochs, list):
        return len(epochs)
    if epochs == "all":
        return sum(t.epochs for t in cfg.trainings())
    if epochs == "stages":
        return max(1, len(cfg.stages))
    return 1


def _task_rows(cfg: RunConfig, task: TaskSpec, split_rows: SplitRows) -> tuple[tuple[int, int], ...] | None:
    """(tokens, first answer position) of the samples a built-in task evaluates; None for a task file (its
    samples are its own)."""
    if task.builtin is None:
        return None
    on = cfg.model_copy(update={"dataset": cfg.dataset_named(task.dataset)})
    rows = split_rows(on).get(task.split, ())
    limit = task.limit or cfg.eval.limit
    return rows[:limit] if limit else rows


def eval_cost(cfg: RunConfig, gpu: GPU | None, history: list[HistoryRun], split_rows: SplitRows,
              estimate: RunEstimate | None) -> EvalCost:
    """Every target × task of the run, summed, with one source line; None seconds when a task is unpriced."""
    targets = eval_targets(cfg)
    tasks = cfg.eval.resolved_tasks()
    total, sources, samples = 0.0, [], 0
    start = job_start(estimate, history, gpu)
    for task in tasks:
        rows = _task_rows(cfg, task, split_rows)
        if rows is None:
            return EvalCost(None, f"task {task.name}: a task file's samples are not known before it runs", targets,
                            len(tasks), samples, *start)
        seconds, source = _predict(cfg, gpu, history, rows, task.max_tokens or cfg.eval.max_tokens, task.name)
        if seconds is None:
            return EvalCost(None, f"task {task.name}: {source}", targets, len(tasks), samples, *start)
        total += seconds * targets
        samples += len(rows)
        sources.append(source)
    src = sources[0] if len(set(sources)) == 1 else "; ".join(sources)
    return EvalCost(round(total, 1), src, targets, len(tasks), samples, *start)


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


def _predict(cfg: RunConfig, gpu: GPU | None, history: list[HistoryRun], rows: tuple[tuple[int, int], ...],
             max_tokens: int, task: str) -> tuple[float | None, str]:
    """(seconds, source in words) of one task on one target, on loaded weights: estimate/evaltime.py's prediction
    (history > probed > assumed generation speed)."""
    got = predict_eval_time(model=cfg.model.path, gpu=gpu, samples=len(rows), prompt_tokens=[a for _, a in rows],
                            answer_tokens=[max(0, n - a) for n, a in rows], max_tokens=max_tokens,
                            batch_size=EVAL_BATCH, history=history, task=task)
    return got.seconds, f"{got.source.value}: {got.detail}"
