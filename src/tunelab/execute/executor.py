"""One small interface for where jobs run (in the spirit of submitit's Executor): submit a job script,
poll jobs, cancel them, find their log. The local executor (execute/local_jobs.py) and Slurm
(execute/slurm_cli.py) implement it; the ledger's `jobs` table records every job with its executor's
name, and refresh, retries, `--wait`, `status` and `cancel` (execute/refresh.py, execute/status.py) are
written once against this interface.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tunelab.execute.failures import ACTIVE_STATES, UNSEEN, SacctRow, base_state

__all__ = ["UNSEEN", "Executor", "JobInfo", "executor_named"]


@dataclass(frozen=True)
class JobInfo:
    """What an executor knows of one job now."""

    state: str  # the scheduler's state (Slurm's names), or UNSEEN
    exit_code: str | None = None  # 'EXIT:SIGNAL'
    elapsed: str | None = None
    node: str | None = None
    reason: str = ""  # why it is pending or how it ended, as the scheduler says it
    rows: tuple[SacctRow, ...] = field(default_factory=tuple)  # accounting rows, job first, then steps
    settled: bool = True  # False: ended, but the accounting record may still arrive (sacct is asynchronous)

    @property
    def ended(self) -> bool:
        return base_state(self.state) not in ACTIVE_STATES


class Executor(Protocol):
    """Where jobs run. Job ids are strings chosen by the executor."""

    name: str

    def submit(self, script: Path, dependency: str | None = None, env: dict[str, str] | None = None) -> str:
        """Start (or queue) a job script; with `dependency`, only once that job completed successfully."""
        ...

    def poll(self, ids: list[str]) -> dict[str, JobInfo] | None:
        """What is known of these jobs (ids it cannot tell about are left out); None when the scheduler
        could not be asked at all (then nothing may be concluded from a job's absence)."""
        ...

    def cancel(self, ids: list[str]) -> None:
        """Stop these jobs (a training job saves a checkpoint first when it gets the time: SIGTERM)."""
        ...

    def log(self, run_dir: Path, kind: str, job_id: str) -> Path:
        """The file a job's output goes to."""
        ...


def executor_named(name: str) -> Executor:
    """The executor a ledger job row names ('local' or 'slurm')."""
    if name == "slurm":
        from tunelab.execute.slurm_cli import SlurmExecutor

        return SlurmExecutor()
    from tunelab.execute.local_jobs import LocalExecutor

    return LocalExecutor()
