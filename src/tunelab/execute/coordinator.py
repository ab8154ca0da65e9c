"""What one coordinator holds while it runs a sweep (execute/sweep.py): the executor, the runs, the job book,
the queue of submissions waiting for room, and the jobs it started."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tunelab.execute.executor import Executor
from tunelab.execute.jobs import JobRow, all_jobs
from tunelab.execute.sweep_view import SweepView
from tunelab.rundir.config import RunConfig


@dataclass(frozen=True)
class Submission:
    """A run's next jobs: its training job and/or its evaluation job (after its training, or after `after`)."""

    cfg: RunConfig
    train: bool
    evaluate: bool
    reason: str
    after: str | None = None

    @property
    def jobs(self) -> int:
        return int(self.train) + int(self.evaluate)

    @property
    def groupable(self) -> bool:
        """A run's whole next attempt (training, then its evaluation), so it may go in a job array or node job."""
        return self.train and self.evaluate and self.after is None


@dataclass
class Sweep:
    exp: Path
    book: Path  # the directory whose ledger holds the jobs: exp, or a private one inside a Slurm node job
    ex: Executor
    runs: dict[str, RunConfig]  # every run of the experiment, as its newest run.yaml says
    view: SweepView
    dry_run: bool = False
    queue: list[Submission] = field(default_factory=list)
    started: set[str] = field(default_factory=set)  # runs this sweep submitted jobs for
    running: dict[int, str] = field(default_factory=dict)  # ledger row -> run: its jobs not yet judged
    said_waiting: bool = False
    said_unreachable: bool = False  # told that the scheduler did not take a job (until one is taken again)

    @property
    def record(self) -> bool:
        """The experiment's own ledger holds the jobs (not a node job's private one)."""
        return self.book == self.exp

    def active_count(self) -> int:
        """This executor's jobs queued or running in the ledger now (a node job holding several runs is one)."""
        return len({j.job_id for j in all_jobs(self.book) if j.executor == self.ex.name and j.active})

    def open_jobs(self, runs: list[str] | set[str]) -> list[JobRow]:
        """This executor's jobs of these runs still without a verdict."""
        wanted = set(runs)
        return [j for j in all_jobs(self.book) if j.run in wanted and j.executor == self.ex.name and j.open]
