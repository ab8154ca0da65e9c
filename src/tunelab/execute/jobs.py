"""Views of the ledger's `jobs` table as typed rows. `book`: the directory whose ledger holds the jobs (the experiment,
or a Slurm node job's private one, which leaves the experiment's ledger to the coordinator)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.execute.executor import JobKind
from tunelab.execute.failures import FailureKind, exit_status
from tunelab.execute.job_states import JobState, is_active_state
from tunelab.ledger import store as ledger


@dataclass(frozen=True)
class JobRow:
    """One job some executor runs for a run (a row of the ledger's jobs table)."""

    id: int
    run: str
    kind: JobKind  # train | eval (the ledger's TEXT read back as the member)
    job_id: str  # the executor's id
    attempt: int  # run.yaml's attempt when submitted
    executor: str
    submitted_at: str
    state: str  # the scheduler's state as it said it (job_states.JobState's words: PENDING, ..., UNSEEN)
    updated_at: str
    depends_on: str | None = None  # afterok job id (eval after train)
    time_limit: str | None = None
    exit_code: str | None = None  # 'EXIT:SIGNAL'
    elapsed: str | None = None
    node: str | None = None
    failure: FailureKind | None = None  # the verdict once ended (execute/failures.py)
    detail: str | None = None
    reason: str | None = None  # why it was submitted
    handled: bool = False  # the retry policy has judged this ended job

    @classmethod
    def from_ledger(cls, row: dict[str, Any]) -> JobRow:
        names = {f.name for f in dataclasses.fields(cls)}
        failure = row.get("failure")
        return cls(**{**{k: v for k, v in row.items() if k in names}, "handled": bool(row.get("handled")),
                      "kind": JobKind(row["kind"]), "failure": FailureKind(failure) if failure is not None else None})

    @property
    def active(self) -> bool:
        """Queued or running, as last seen (what max_queued counts)."""
        return is_active_state(self.state)

    @property
    def job_state(self) -> JobState | None:
        """The state as a JobState (None: a word tunelab does not know)."""
        return JobState.of(self.state)

    @property
    def open(self) -> bool:
        """Not judged yet: active, or ended without a verdict (waiting for accounting). --wait waits for these."""
        return self.failure is None

    @property
    def exit(self) -> int | None:
        """The exit code ('1:0' -> 1), None when unknown."""
        return exit_status(self.exit_code)[0]


@dataclass
class RunJobs:
    """A run's newest training and evaluation jobs."""

    train: JobRow | None = None
    eval: JobRow | None = None


def all_jobs(book: Path) -> list[JobRow]:
    return [JobRow.from_ledger(r) for r in ledger.query(book, "SELECT * FROM jobs ORDER BY id")]


def latest_jobs(book: Path) -> dict[str, RunJobs]:
    out: dict[str, RunJobs] = {}
    for j in all_jobs(book):
        rj = out.setdefault(j.run, RunJobs())
        if j.kind == JobKind.TRAIN:
            rj.train = j
        else:
            rj.eval = j
    return out


def is_active(job: JobRow | None) -> bool:
    """Queued or running, as last seen; False for no job."""
    return job is not None and job.active
