"""metrics.jsonl: one row per logging step (training) or evaluation (validation), appended by the job.
A kill may leave a truncated last line; reading skips it (fsutil.read_jsonl)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.fsutil import append_text, atomic_write_text, read_jsonl
from tunelab.rundir.layout import METRICS_FILE
from tunelab.rundir.memory import MemoryKind
from tunelab.rundir.record import JsonRecord


@dataclass(kw_only=True)
class MetricRow(JsonRecord):
    """One line of metrics.jsonl. Token counts and times are cumulative over the run (resumes included)."""

    omit_none = frozenset({"stage"})

    step: int | None = None
    epoch: float | None = None
    loss: float | None = None  # None on a validation row
    val_loss: float | None = None  # set on a validation row only
    lr: float | None = None
    grad_norm: float | None = None
    tokens: int | None = None  # padding included
    nonpad_tokens: int | None = None
    examples: int | None = None
    tokens_per_s: float | None = None  # since the previous training row, over training time
    train_time_s: float | None = None
    data_wait_s: float | None = None  # waited for data since the previous training row
    peak_memory_gib: float | None = None  # the worst process's
    memory_kind: MemoryKind | None = None
    elapsed_s: float | None = None
    stage: str | None = None  # a staged run: the stage that logged it
    # the machine's load (tunelab/host/cpuload.py; None: not measured, an older file, or not Linux)
    cpu_s: float | None = None  # this process's CPU seconds since the job's process started (all its threads)
    others_share: float | None = None  # the share of its cores other processes held since the previous row

    @classmethod
    def decode(cls, known: dict[str, Any]) -> dict[str, Any]:
        return {**known, "memory_kind": MemoryKind.read(known.get("memory_kind"))}

    @property
    def is_train(self) -> bool:
        return self.loss is not None

    @property
    def is_validation(self) -> bool:
        return self.val_loss is not None


def metrics_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / METRICS_FILE


def read_metrics(run_dir: str | Path) -> list[MetricRow]:
    """Every complete row, in file order ([] without the file)."""
    return [MetricRow.from_json(r) for r in read_jsonl(metrics_path(run_dir))]


def append_metric(run_dir: str | Path, row: MetricRow) -> None:
    """One row appended and flushed (readers poll it); a full disk raises NoSpaceError (a cut row is skipped)."""
    append_text(metrics_path(run_dir), json.dumps(row.to_json()) + "\n")


def write_metrics(run_dir: str | Path, rows: Iterable[MetricRow], drop_none: bool = False) -> Path:
    """Replace the file with these rows, atomically (a resume dropping rows logged after its checkpoint).
    `drop_none`: each row with only the fields it has (rows read from another trainer's logs)."""
    text = "".join(json.dumps(r.to_json(drop_none=drop_none)) + "\n" for r in rows)
    return atomic_write_text(metrics_path(run_dir), text)


def steady_tokens_per_s(rows: list[MetricRow], warmup_rows: int = 1) -> float | None:
    """Mean throughput past warm-up: tokens over training time between the first and last such rows."""
    train = [r for r in rows if r.is_train and r.train_time_s is not None]
    if len(train) > warmup_rows + 1:
        first, last = train[warmup_rows], train[-1]
    elif len(train) >= 2:
        first, last = train[0], train[-1]
    elif len(train) == 1 and train[0].train_time_s:
        return (train[0].tokens or 0) / train[0].train_time_s
    else:
        return None
    dt = (last.train_time_s or 0.0) - (first.train_time_s or 0.0)
    return ((last.tokens or 0) - (first.tokens or 0)) / dt if dt > 0 else None


RECENT_ROWS = 5  # the live pace: over the last few logged rows (start-up and warm-up drop out as the run goes)


def _timed(rows: list[MetricRow]) -> list[MetricRow]:
    return [r for r in rows if r.step and r.elapsed_s]


def seconds_per_step(rows: list[MetricRow]) -> float | None:
    """A run's live pace: wall seconds per optimizer step over its last RECENT_ROWS logged rows (validations and
    saves between them included: they are part of what is left); with one row, its mean pace so far."""
    timed = _timed(rows)
    if not timed:
        return None
    first, last = timed[max(0, len(timed) - 1 - RECENT_ROWS)], timed[-1]
    steps = (last.step or 0) - (first.step or 0)
    seconds = (last.elapsed_s or 0.0) - (first.elapsed_s or 0.0)
    if steps <= 0 or seconds <= 0:
        return (last.elapsed_s or 0.0) / (last.step or 1)
    return seconds / steps


def step_paces(rows: list[MetricRow]) -> list[float]:
    """Seconds per step between consecutive rows of the recent window (how steady the pace is)."""
    timed = _timed(rows)[-1 - RECENT_ROWS:]
    return [(b.elapsed_s - a.elapsed_s) / (b.step - a.step) for a, b in zip(timed, timed[1:])
            if b.step and a.step and b.step > a.step and b.elapsed_s and a.elapsed_s and b.elapsed_s > a.elapsed_s]


def seconds_left(rows: list[MetricRow], step: int | None, total: int | None) -> float | None:
    """The steps left at the live pace (status's ETA and the re-plan: one formula); None before a step or done."""
    if not step or not total or step >= total:
        return None
    pace = seconds_per_step(rows)
    return None if pace is None else pace * (total - step)
