"""A training job its scheduler started again under the same id (Slurm's requeue, preemption, a lost node, the trainer's
own requeue). Nothing is resubmitted and no retry is spent: the next start resumes from the last checkpoint. Each ended
start is still an attempt row, its verdict from failures.requeue_verdict, so the attempts table says "preempted" (never
"failed") and the report counts the restart; rows already recorded are counted, so a start is recorded once however
often the job is polled."""

from __future__ import annotations

from pathlib import Path

from tunelab.execute.attempts import all_attempts
from tunelab.execute.executor import Executor, JobInfo, JobKind
from tunelab.execute.failures import Failure, requeue_verdict
from tunelab.execute.jobs import JobRow
from tunelab.ledger import store as ledger
from tunelab.rundir import now_iso


def record_restarts(book: Path, job: JobRow, info: JobInfo, run_dir: Path | None, ex: Executor) -> list[Failure]:
    """Record the starts of `job` that ended in a requeue and are not recorded yet; returns their verdicts. Accounting
    that has not caught up is waited for while the job is active (a lost node shows only there); with accounting down,
    or the job ended, the log tells."""
    if job.kind != JobKind.TRAIN or info.restarts <= 0:
        return []
    mine = [a for a in all_attempts(book) if a.run == job.run and a.job_id == job.job_id]
    if len(mine) >= info.restarts:
        return []
    if info.rows and len(info.earlier) < info.restarts and not info.ended:
        return []  # accounting answers but lags behind the requeue (seconds): its record says more, look again
    text = ex.output(run_dir, job.kind, job.job_id) if run_dir is not None else ""
    earlier = list(info.earlier) if len(info.earlier) == info.restarts else []  # only a full history is aligned
    started = mine[-1].finished_at if mine else job.submitted_at
    verdicts = []
    for start in range(len(mine), info.restarts):
        verdict = requeue_verdict(earlier[start] if earlier else None, text, start)
        finished = now_iso()
        ledger.record_attempt(book, run=job.run, attempt=job.attempt, executor=job.executor, job_id=job.job_id,
                              node=job.node, started_at=started, finished_at=finished, exit_code=None,
                              state=verdict.kind, reason=verdict.detail)
        started = finished
        verdicts.append(verdict)
    return verdicts
