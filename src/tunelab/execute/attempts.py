"""The ledger's `attempts` table as typed rows: every ended start of a run's job with its verdict, read back as the
FailureKind it was."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.execute.failures import FailureKind
from tunelab.ledger import store as ledger


@dataclass(frozen=True)
class AttemptRow:
    """One ended start of a run's job and its verdict (a row of the ledger's attempts table)."""

    id: int
    run: str
    attempt: int | None = None
    executor: str | None = None
    job_id: str | None = None
    node: str | None = None  # where it ran, as its scheduler names the node (None: unknown, or an older ledger)
    started_at: str | None = None
    finished_at: str | None = None
    exit_code: int | None = None
    state: FailureKind | None = None  # the verdict on the job (the ledger's TEXT read back as the member)
    reason: str | None = None

    @classmethod
    def from_ledger(cls, row: dict[str, Any]) -> AttemptRow:
        names = {f.name for f in dataclasses.fields(cls)}
        state = row.get("state")
        return cls(**{**{k: v for k, v in row.items() if k in names},
                      "state": FailureKind(state) if state is not None else None})


def all_attempts(book: Path) -> list[AttemptRow]:
    """Every attempt, oldest first."""
    return [AttemptRow.from_ledger(r) for r in ledger.query(book, "SELECT * FROM attempts ORDER BY id")]
