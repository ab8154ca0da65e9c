"""The history's generation table: how fast each model generated, for predicting evaluations. Probed rows (`tunelab
probe`) and measured ones (a finished target × task's scores.json, recorded by the coordinator: jobs do not write
SQLite). Keyed by what it measured (model + device; an evaluation's identity), so ingesting the same measurement again,
from a moved or copied experiment too, replaces its row."""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from pathlib import Path

from tunelab.fsutil import add_missing_columns
from tunelab.ledger.history import connect, history_path
from tunelab.rundir.probe import GenerationSpeed, ProbeResult
from tunelab.rundir.scores import TaskScores, task_dir
from tunelab.rundir.status import now_iso

TABLE = "generation"


class GenerationOrigin(StrEnum):
    """How a generation row was obtained."""

    PROBED = "probed"  # tunelab probe: timed generations of random prompts
    MEASURED = "measured"  # a finished evaluation's own throughput


@dataclass
class GenerationRow:
    """One measurement of a model generating (see the module docstring for the two kinds)."""

    key: str
    origin: GenerationOrigin
    model_path: str
    device: str | None = None
    cpu_threads: int | None = None
    cpu_model: str | None = None  # on a CPU, its model (host/machine.py; None: a GPU, or recorded before it was)
    task: str | None = None  # measured: the task evaluated
    batch_size: int | None = None
    samples: int | None = None
    prompt_tokens: int | None = None  # measured: every sample's prompt tokens, summed
    generated_tokens: int | None = None  # measured: every sample's generated tokens, summed
    wall_s: float | None = None  # measured: scores.json's duration (a target's first task alone includes its load)
    concurrent: int | None = None  # measured: target × tasks that shared that wall time (1: alone)
    prefill_tokens_per_s: float | None = None  # probed
    decode_fixed_s: float | None = None  # probed: a decode step's fixed part, s
    decode_row_s: float | None = None  # probed: a decode step's part per row of the batch, s
    recorded_at: str | None = None
    origin_where: str | None = None

    def __post_init__(self) -> None:
        self.origin = GenerationOrigin(self.origin)

    def speed(self) -> GenerationSpeed | None:
        """A probed row's speed record (None for a measured row)."""
        if self.prefill_tokens_per_s is None or self.decode_fixed_s is None or self.decode_row_s is None:
            return None
        return GenerationSpeed(prefill_tokens_per_s=self.prefill_tokens_per_s, decode_fixed_s=self.decode_fixed_s,
                               decode_row_s=self.decode_row_s)

    def wall_share_s(self) -> float | None:
        """The wall time this evaluation alone accounts for (shared wall time split evenly)."""
        return self.wall_s / max(1, self.concurrent or 1) if self.wall_s is not None else None


def _columns() -> dict[str, str]:
    kinds = {"int": "INTEGER", "float": "REAL"}
    return {f.name: kinds.get(str(f.type).split(" ")[0], "TEXT") for f in fields(GenerationRow)}


def _ensure(conn: sqlite3.Connection) -> None:
    cols = _columns()
    conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (key TEXT PRIMARY KEY, origin TEXT NOT NULL, "
                 "model_path TEXT NOT NULL)")
    add_missing_columns(conn, TABLE, cols)  # older history files gain the columns added since


def record(rows: list[GenerationRow], path: Path | None = None) -> None:
    """Insert or replace these rows (by key)."""
    if not rows:
        return
    cols = [f.name for f in fields(GenerationRow)]
    with connect(path) as conn:
        _ensure(conn)
        conn.executemany(f"INSERT OR REPLACE INTO {TABLE} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                         [tuple(asdict(r).values()) for r in rows])


def load(path: Path | None = None) -> list[GenerationRow]:
    """Every generation row, oldest first ([] without a history file)."""
    p = path or history_path()
    if not p.is_file():
        return []
    with connect(p) as conn:
        _ensure(conn)
        rows = [dict(r) for r in conn.execute(f"SELECT * FROM {TABLE} ORDER BY recorded_at")]
    return [GenerationRow(**r) for r in rows]


def probed_row(model_path: str, result: ProbeResult, where: str) -> GenerationRow | None:
    """A probe's generation speed as a row (None when the probe did not time generation)."""
    gen = result.generation
    if gen is None:
        return None
    return GenerationRow(
        key=f"probe-gen:{model_path}:{result.device}:{result.cpu_threads}", origin=GenerationOrigin.PROBED,
        model_path=model_path, device=result.device, cpu_threads=result.cpu_threads, cpu_model=result.cpu_model,
        batch_size=max((p.batch for p in gen.points), default=None), prefill_tokens_per_s=gen.prefill_tokens_per_s,
        decode_fixed_s=gen.decode_fixed_s, decode_row_s=gen.decode_row_s, recorded_at=now_iso(), origin_where=where)


def measured_row(run_dir: Path, scores: TaskScores, key: str | None = None) -> GenerationRow | None:
    """A finished evaluation's throughput as a row (None without token counts). key: its identity (None: its directory,
    the key before identities)."""
    if scores.generated_tokens is None or scores.samples <= 0:
        return None
    where = task_dir(run_dir, scores.label, scores.task)
    return GenerationRow(
        key=f"eval:{key or where}", origin=GenerationOrigin.MEASURED, model_path=scores.model_path,
        device=scores.device, cpu_model=scores.cpu_model, task=scores.task, batch_size=scores.batch_size, samples=scores.samples,
        prompt_tokens=scores.prompt_tokens, generated_tokens=scores.generated_tokens, wall_s=scores.duration_s,
        concurrent=scores.concurrent, recorded_at=scores.evaluated_at, origin_where=str(where / "scores.json"))
