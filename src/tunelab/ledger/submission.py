"""A completed run's training job as the experiment ledger recorded its submission (table jobs), and the dispatch it
measured: from that submission to the training process's creation (summary.json `process_started_at`). The history
keeps it with the executor, so that a plan prices each job's dispatch on an executor from what jobs there took
(forecast/jobstart.py `job_dispatch`): a Ray job's supervisor or Slurm's scheduling pass before the job's process."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from tunelab.rundir.status import read_iso

COMPLETED = "completed"  # execute/failures.py FailureKind.COMPLETED: the ledger sits below execute/


@dataclass(frozen=True)
class TrainingJob:
    """The completed attempt's training job: when tunelab submitted it, where its scheduler said it ran, and whether
    its process's start is not its submission's to measure: the scheduler started it again under the same id (a Slurm
    requeue), or it is a node job several runs share (slurm.pack: node), where a run waits for the runs before it."""

    submitted_at: str
    node: str | None = None
    not_its_own: bool = False


def training_job(conn: sqlite3.Connection, run: str, attempt: int | None) -> TrainingJob | None:
    """The run's latest training job of `attempt` (None: none recorded — trained by `tunelab train` by hand, or an
    experiment from before the jobs table)."""
    if attempt is None:
        return None
    row = conn.execute("SELECT job_id, submitted_at, node FROM jobs WHERE run = ? AND kind = 'train' AND attempt = ? "
                       "ORDER BY id DESC LIMIT 1", (run, attempt)).fetchone()
    if row is None:
        return None
    # ended starts of the same job other than its completion: requeued (execute/refresh.py record_restarts)
    restarts = conn.execute("SELECT COUNT(*) FROM attempts WHERE run = ? AND job_id = ? AND (state IS NULL OR "
                            "state != ?)", (run, row["job_id"], COMPLETED)).fetchone()[0]
    shared = conn.execute("SELECT COUNT(*) FROM jobs WHERE job_id = ? AND run != ?", (row["job_id"], run)).fetchone()[0]
    return TrainingJob(row["submitted_at"], row["node"], bool(restarts or shared))


def dispatch_seconds(job: TrainingJob | None, process_started_at: str | None) -> float | None:
    """Seconds from the job's submission to the training process's creation; None where either is unknown or
    unreadable, or the start is not the job's own (`TrainingJob.not_its_own`). Never below 0: the submission is the coordinator's clock and the creation
    the node's, and a skew between them (or a process made before `submit` returned, as a local one is) reads 0."""
    if job is None or job.not_its_own or not process_started_at:
        return None
    submitted, started = read_iso(job.submitted_at), read_iso(process_started_at)
    if submitted is None or started is None:
        return None
    return round(max(0.0, (started - submitted).total_seconds()), 3)
