"""Bring every open job in the ledger up to date from its executor, and judge the ones that ended (the run's files win
over exit codes), once for every executor.

Every open job reaches a verdict in bounded time: an ended job whose accounting has not arrived within SETTLE_GRACE_S is
judged without it. A job the executor cannot tell about now keeps its state: unknown is never "ended". A start Slurm
requeued is recorded as an attempt (execute/requeues.py)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.execute.attempts import all_attempts
from tunelab.execute.executor import UNSEEN, Executor, JobInfo, JobKind
from tunelab.execute.executors import executor_named
from tunelab.execute.failures import CANCELLED, FAILED, NODE_FAIL, Failure, classify, requeue_verdict
from tunelab.execute.failures import COMPLETED as JUDGED_COMPLETED
from tunelab.execute.job_states import JobState, is_active_state
from tunelab.execute.jobs import JobRow, all_jobs
from tunelab.ledger import store as ledger
from tunelab.rundir import COMPLETED, Status, now_iso, read_status
from tunelab.rundir.config import RunConfig
from tunelab.rundir.experiment import is_evaluated, task_names, training_state
from tunelab.rundir.layout import EVAL_DIR, SCORES_FILE, STATUS_FILE


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


SETTLE_GRACE_S = 120.0  # sacct normally lags by seconds; past this an ended job is judged without it
REQUEUE_GRACE_S = 600.0  # a job that requeued itself and still looks ended after this has ended
RECHECK_S = 86_400.0  # a verdict given without accounting is judged again when it answers, for this long
EVAL_OUTPUTS = f"every task's {EVAL_DIR}/<checkpoint>/<task>/{SCORES_FILE}"  # what an evaluation job writes


def executors_for(jobs: list[JobRow], known: dict[str, Executor] | None = None,
                  reachable_only: bool = False) -> dict[str, Executor]:
    """One executor per name the jobs use, reusing `known`; reachable_only: only those askable from here."""
    out = dict(known or {})
    for name in sorted({j.executor for j in jobs} - set(out)):
        try:
            out[name] = executor_named(name)
        except TunelabError:
            if not reachable_only:
                raise
    return out


def waited_s(job: JobRow, info: JobInfo, now: datetime | None = None) -> float:
    """How long the ledger has held this job in the state the executor reports now (0 if it changed)."""
    if info.state != job.state:
        return 0.0
    now = now or datetime.now(UTC)
    return (now - datetime.fromisoformat(job.updated_at)).total_seconds()


def should_judge(job: JobRow, info: JobInfo, now: datetime | None = None) -> bool:
    return info.ended and (info.settled or waited_s(job, info, now) >= SETTLE_GRACE_S)


def requeued_itself(job: JobRow, status: Status, now: datetime | None = None) -> bool:
    """The trainer requeued this job within REQUEUE_GRACE_S, not restarted yet: an ended look is not its end."""
    if job.kind != JobKind.TRAIN:
        return False
    if status.requeued_job != job.job_id or not status.requeued_at:
        return False
    now = now or datetime.now(UTC)
    return (now - datetime.fromisoformat(status.requeued_at)).total_seconds() < REQUEUE_GRACE_S


def refresh(book: Path, runs: dict[str, RunConfig], executors: dict[str, Executor] | None = None,
            reachable_only: bool = False) -> list[JobRow]:
    """Update every open job's state and judge the ended ones; returns the changed rows. book: the ledger's dir."""
    every = all_jobs(book)
    open_jobs = [j for j in every if j.open]
    again = [j for j in every if judged_without_accounting(j)]
    changed = []
    for name, ex in executors_for(open_jobs + again, executors, reachable_only).items():
        jobs = [j for j in open_jobs if j.executor == name]
        redo = [j for j in again if j.executor == name]
        seen = ex.poll([j.job_id for j in jobs + redo]) if jobs or redo else {}
        for j in redo:
            row = judge_again(book, j, (seen or {}).get(j.job_id), runs.get(j.run), ex)
            if row is not None:
                changed.append(row)
        for j in jobs:
            info = (seen or {}).get(j.job_id)
            if info is None:
                continue  # the executor cannot tell now: ask again later
            cfg = runs.get(j.run)
            record_restarts(book, j, info, cfg.run_dir if cfg is not None else None, ex)  # requeued starts
            # an ended training job: its run's status.json, read once (did it requeue itself? the verdict)
            status = read_status(cfg.run_dir) if info.ended and cfg is not None and j.kind == JobKind.TRAIN else None
            if status is not None and requeued_itself(j, status):
                info = JobInfo(JobState.REQUEUED, reason="requeued by its trainer")  # counts as active; not judged
            fields: dict[str, Any] = {"state": info.state}
            if info.node and info.node != j.node:
                fields["node"] = info.node  # where it runs, once the scheduler says (status shows it while it runs)
            if info.exit_code is not None:
                fields.update(exit_code=info.exit_code, elapsed=info.elapsed, node=info.node)
            judge = should_judge(j, info)
            if judge:
                verdict = judge_job(j, cfg, info, ex, status)
                fields.update(failure=verdict.kind, detail=verdict.detail)
            if fields["state"] != j.state or judge or "node" in fields:
                ledger.update_job(book, j.id, **fields)
                changed.append(dataclasses.replace(j, **fields))
    return changed


def judged_without_accounting(job: JobRow, now: datetime | None = None) -> bool:
    """Judged with no accounting record (no exit code: sacct failing, or not yet there), within RECHECK_S."""
    if job.open or job.exit_code is not None:
        return False
    now = now or datetime.now(UTC)
    return (now - datetime.fromisoformat(job.updated_at)).total_seconds() < RECHECK_S


def judge_again(book: Path, job: JobRow, info: JobInfo | None, cfg: RunConfig | None, ex: Executor) -> JobRow | None:
    """Accounting answers for a job judged without it: its exit code, time, node and state go to the ledger, and a
    generic verdict becomes the specific one accounting shows. A verdict from the run's files stands, and so does the
    retry decision. Returns the row when its verdict changed."""
    if info is None or not info.ended or not info.rows or info.exit_code is None or is_active_state(info.rows[0].state):
        return None  # squeue may still say COMPLETING after accounting's end: the row never goes back to active
    fields: dict[str, Any] = {"state": info.state, "exit_code": info.exit_code, "elapsed": info.elapsed,
                              "node": info.node}
    log = ex.output(cfg.run_dir, job.kind, job.job_id) if cfg is not None else ""
    verdict = classify(info.state, info.exit_code, list(info.rows), log)
    sharper = job.failure in (FAILED, CANCELLED) and verdict.kind not in (FAILED, CANCELLED, JUDGED_COMPLETED)
    if sharper:
        fields.update(failure=verdict.kind, detail=f"{verdict.detail} (judged again with accounting: was "
                                                   f"{job.failure})")
        if job.kind == JobKind.TRAIN:
            ledger.amend_attempt(book, run=job.run, job_id=job.job_id, state=verdict.kind,
                                 reason=fields["detail"], exit_code=verdict.exit_code)
    ledger.update_job(book, job.id, **fields)
    return dataclasses.replace(job, **fields) if sharper else None


def judge_job(job: JobRow, cfg: RunConfig | None, info: JobInfo, ex: Executor, status: Status | None = None
              ) -> Failure:
    """The verdict on an ended job, from the scheduler's view, its output and the run's files (`status`)."""
    rows = list(info.rows)
    if cfg is None:
        return classify(info.state, info.exit_code, rows)
    text = ex.output(cfg.run_dir, job.kind, job.job_id)
    if job.kind == JobKind.TRAIN:
        status = read_status(cfg.run_dir) if status is None else status
        complete, expected = training_state(cfg.run_dir, status) == COMPLETED, STATUS_FILE
    else:
        complete = is_evaluated(cfg.run_dir, task_names(cfg)) and JobState.of(info.state) in (JobState.COMPLETED, UNSEEN)
        expected = EVAL_OUTPUTS
    f = classify(info.state, info.exit_code, rows, text, status, complete, expected)
    detail = f.detail
    if f.kind in (CANCELLED, NODE_FAIL) and info.reason and info.reason not in ("None", "NonZeroExitCode"):
        detail = f"{detail} ({info.reason})"
    if info.state == UNSEEN:
        detail += f" ({ex.name} no longer knows job {job.job_id}: judged from its log and the run's files)"
    return Failure(f.kind, detail, f.exit_code)
