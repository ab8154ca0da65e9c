"""status.json: where a run is now. The job merges changes into it and replaces it atomically, so a
reader never sees half of it; every other process only reads it."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.fsutil import atomic_write_json, read_json
from tunelab.rundir.layout import STATUS_FILE
from tunelab.rundir.record import JsonRecord, plain


def now_iso(timespec: str = "seconds") -> str:
    """Now, in UTC, ISO 8601 (`timespec` as datetime.isoformat: milliseconds where an interval is taken from it)."""
    return datetime.now(UTC).isoformat(timespec=timespec)


def read_iso(iso: str | None) -> datetime | None:
    """A time a file or ledger wrote (ISO 8601), in UTC where it names no zone; None where absent or unreadable."""
    try:
        t = datetime.fromisoformat(iso) if iso else None
    except ValueError:
        return None
    return t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t


@dataclass(kw_only=True)
class Status(JsonRecord):
    """status.json. Every field may be absent (a run not started yet has no file: all None)."""

    run: str | None = None
    state: str | None = None  # layout's run states
    attempt: int | None = None
    started_at: str | None = None  # this start
    first_started_at: str | None = None
    resumed_from: str | None = None  # checkpoint-STEP this start resumed from
    restarts: int | None = None  # resumes from a checkpoint, over the whole run
    error: str | None = None  # "Type: message" of a failed or interrupted start
    requeued_job: str | None = None  # the Slurm job id that requeued itself (execute/refresh.py)
    requeued_at: str | None = None
    stage: str | None = None  # a staged run: the stage training now
    stage_index: int | None = None
    stage_count: int | None = None
    step: int | None = None
    epoch: float | None = None
    total_steps: int | None = None
    last_checkpoint: str | None = None  # relative to the run dir
    finished_at: str | None = None
    adopted_from: str | None = None  # tunelab adopt: the output dir the run came from
    updated_at: str | None = None
    host: str | None = None  # with pid: the process that wrote it last (a resume on another node names it)
    pid: int | None = None

    @property
    def reason(self) -> str:
        """Why this start ended early, as one line for people: the error's first line, without the type of
        tunelab's own errors (their messages are written for people: 'no space left on …'); '' when none."""
        line = (self.error or "").strip().splitlines()[0] if (self.error or "").strip() else ""
        kind, sep, message = line.partition(": ")
        return message if sep and kind in _error_names(TunelabError) else line


def _error_names(cls: type[TunelabError]) -> set[str]:
    """The class and its subclasses loaded now (asked at each read: a subclass may be imported later)."""
    return {cls.__name__}.union(*(_error_names(sub) for sub in cls.__subclasses__()))


Status.omit_none = frozenset(Status.field_names())  # the file holds only the keys its writers gave it


def read_status(run_dir: str | Path) -> Status:
    data = read_json(Path(run_dir) / STATUS_FILE, default=None)
    return Status.from_json(data if isinstance(data, dict) else {})


def write_status(run_dir: str | Path, **changes: Any) -> Status:
    """Merge `changes` into status.json, stamped with time, host and pid; atomic, keeping exactly the keys it was given.
    A process that writes it again and again holds it instead (StatusWriter)."""
    return StatusWriter(run_dir).write(**changes)


PROGRESS_FIELDS = frozenset({"step", "epoch", "total_steps"})


class StatusWriter:
    """status.json held by its writer: read once, then each change merged in memory and the file replaced whole, so the
    writer never reads back what it wrote (the job's main process holds one)."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / STATUS_FILE
        self._held: dict[str, Any] | None = None

    def _data(self) -> dict[str, Any]:
        if self._held is None:
            data = read_json(self.path, default=None)
            self._held = data if isinstance(data, dict) else {}
        return self._held

    @property
    def status(self) -> Status:
        """The status as earlier writers left it, with this writer's changes."""
        return Status.from_json(self._data())

    def write(self, **changes: Any) -> Status:
        """Merge `changes` (Status fields), stamped with the time, host and pid; replace the file atomically."""
        unknown = set(changes) - set(Status.field_names())
        if unknown:
            raise TypeError(f"not fields of status.json: {sorted(unknown)}")
        merged = self._data()
        merged.update({k: plain(v) for k, v in changes.items()})
        merged.update(updated_at=now_iso(), host=socket.gethostname(), pid=os.getpid())
        # a change: nothing to compare, no read back. Progress alone (step, epoch) is rewritten at every logged step
        # and replaced atomically all the same; only a change of anything else is worth an fsync (docs/benchmarks.md).
        durable = not set(changes) <= PROGRESS_FIELDS
        atomic_write_json(self.path, merged, durable=durable, check_unchanged=False)
        return Status.from_json(merged)


def write_new_status(run_dir: str | Path, status: Status) -> Path:
    """status.json written whole, as given (a run made complete elsewhere: tunelab adopt)."""
    return atomic_write_json(Path(run_dir) / STATUS_FILE, status.to_json())
