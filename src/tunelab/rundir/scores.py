"""scores.json (<run_dir>/eval/<label>/<task>/): one finished evaluation of one task on one target. Written last and
atomically, so its presence means the task finished; an interrupted evaluation leaves none and is redone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError, field_serializer, field_validator

from tunelab.fsutil import atomic_write_json, read_json
from tunelab.host.cpuload import LoadWindow
from tunelab.rundir.layout import EVAL_DIR, SCORES_FILE
from tunelab.stats.records import Interval, SampleValue


class TaskScores(BaseModel):
    """What one task scored on one target (scores.json)."""

    run: str
    kind: str
    label: str  # epoch_N | base | checkpoint
    epoch: int | None
    task: str
    builtin: str | None = None
    file: str | None = None  # a user's task file
    task_function: str | None = None  # its @task function
    dataset: str | None = None
    split: str | None = None
    metrics: dict[str, float | None]
    primary_metric: str
    score: float | None  # = metrics[primary_metric]
    greater_is_better: bool = True
    samples: int
    log: str  # the .eval file beside scores.json
    model_path: str
    adapter_path: str | None = None
    max_tokens: int | None = None
    decoding: str | None = None  # 'greedy' or 'sampling, temperature=…, seed=…' (the task's own config)
    grader: str | None = None  # the model bound to the grader role; None: the evaluated model grades itself
    duration_s: float  # wall-clock of this task's evaluation (model loading included on the first task)
    inspect_duration_s: float | None = None  # inspect's own start-to-end time of the eval
    # throughput, for predicting evaluations (ledger/generation.py; None: written before they were kept)
    prompt_tokens: int | None = None  # every sample's prompt tokens, summed (the model's usage)
    generated_tokens: int | None = None  # every sample's generated tokens, summed
    batch_size: int | None = None  # generation's batch
    device: str | None = None  # 'cpu' or the GPU's name
    cpu_model: str | None = None  # on a CPU, its model (host/machine.py): speeds of another CPU are not this one's
    concurrent: int | None = None  # target × tasks evaluated at once, sharing duration_s (1: alone)
    # the machine's load over this evaluation (host/cpuload.py; a wave's tasks: from the wave's start to the task's
    # end; None: not measured, or a scores.json written before it was)
    load: LoadWindow | None = None
    evaluated_at: str
    # per-sample scores (what intervals and paired comparisons are computed from) and each metric's
    # 95 % interval; empty in scores.json written before tunelab kept them
    per_sample: list[SampleValue] = []
    intervals: dict[str, Interval] = {}

    @field_validator("load", mode="before")
    @classmethod
    def _read_load(cls, value: Any) -> LoadWindow | None:
        return value if isinstance(value, LoadWindow) else LoadWindow.from_json(value)

    @field_serializer("load")
    def _write_load(self, value: LoadWindow | None) -> dict[str, Any] | None:
        return None if value is None else value.to_json()


def task_dir(run_dir: str | Path, label: str, task: str) -> Path:
    return Path(run_dir) / EVAL_DIR / label / task


def write_scores(out_dir: Path, scores: TaskScores) -> Path:
    return atomic_write_json(out_dir / SCORES_FILE, scores.model_dump(mode="json"))


def read_task_scores(path: Path) -> TaskScores | None:
    """One scores.json (None when absent, truncated or of an older layout)."""
    data = read_json(path, default=None)
    if not isinstance(data, dict):
        return None
    try:
        return TaskScores.model_validate(data)
    except ValidationError:
        return None


def read_scores(run_dir: str | Path, task_order: list[str] | None = None) -> list[TaskScores]:
    """Every finished evaluation of a run: base first, then by epoch; tasks in task_order, others by name."""
    root = Path(run_dir) / EVAL_DIR
    found = [s for p in sorted(root.glob(f"*/*/{SCORES_FILE}")) if (s := read_task_scores(p)) is not None]
    order = {name: i for i, name in enumerate(task_order or [])}
    return sorted(found, key=lambda s: (-1 if s.epoch is None else s.epoch, s.label,
                                        order.get(s.task, len(order)), s.task))


def is_scored(run_dir: str | Path, label: str, task: str) -> bool:
    return read_task_scores(task_dir(run_dir, label, task) / SCORES_FILE) is not None
