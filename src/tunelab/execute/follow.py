"""Following a sweep's jobs: judge each ended job once, apply the retry policy (execute/retry.py) and queue the retry,
through the sweep's executor whatever it is."""

from __future__ import annotations

from tunelab.execute import claims, retry
from tunelab.execute.attempts import all_attempts
from tunelab.execute.coordinator import Submission, Sweep
from tunelab.execute.executor import JobKind
from tunelab.execute.executors import executor_class
from tunelab.execute.failures import COMPLETED, PREEMPTED, Failure
from tunelab.execute.jobs import JobRow, RunJobs, all_jobs, latest_jobs
from tunelab.ledger import store as ledger
from tunelab.rundir import now_iso
from tunelab.rundir.config import load_run_config


def handle_ended(sweep: Sweep) -> None:
    """Judge every ended job not yet handled: record the attempt, apply the retry policy; skip others' runs."""
    latest = latest_jobs(sweep.book)
    for j in all_jobs(sweep.book):
        if j.handled or j.failure is None:
            continue
        cfg = sweep.runs.get(j.run)
        if j.kind != JobKind.TRAIN or cfg is None:
            ledger.update_job(sweep.book, j.id, handled=1)
            continue
        if claims.claim(cfg.run_dir) is not None:
            continue
        retried = _judge(sweep, j, latest[j.run])
        if not retried:
            claims.release(cfg.run_dir)
        if sweep.record:
            ledger.ingest_all(sweep.exp, [sweep.runs[j.run]])


def _judge(sweep: Sweep, j: JobRow, rj: RunJobs) -> bool:
    """Record one ended training job's attempt; queue its retry when the policy says so. True: queued."""
    cfg = load_run_config(sweep.runs[j.run].run_dir)  # the newest run.yaml
    note = j.detail
    queued = None
    if j.failure is not None and j.failure != COMPLETED and rj.train is not None and rj.train.id == j.id:
        preempted = sum(1 for o in all_jobs(sweep.book)  # earlier attempts' preemptions: no budget spent
                        if o.run == j.run and o.kind == JobKind.TRAIN and o.id != j.id and o.failure == PREEMPTED)
        decision = retry.decide(cfg, Failure(j.failure, j.detail or "", j.exit), executor_class(j.executor),
                                preempted)
        note = f"{j.detail}; {decision.reason}"
        if decision.retry:
            if rj.eval is not None and rj.eval.active:  # its afterok can never be satisfied now
                sweep.ex.cancel([rj.eval.job_id])
            new_cfg = retry.apply(decision)
            sweep.runs[cfg.name] = new_cfg
            queued = Submission(new_cfg, True, sweep.ex.detached, decision.reason)
    requeued = [a for a in all_attempts(sweep.book) if a.run == j.run and a.job_id == j.job_id]  # requeues.py
    ledger.record_attempt(sweep.book, run=j.run, attempt=j.attempt, executor=j.executor, job_id=j.job_id,
                          node=j.node, started_at=requeued[-1].finished_at if requeued else j.submitted_at,
                          finished_at=now_iso(), exit_code=j.exit,
                          state=j.failure, reason=note)
    ledger.update_job(sweep.book, j.id, handled=1, detail=note)
    if queued is not None:
        sweep.view.say("[yellow]{}: {}[/yellow]", j.run, note)
        sweep.queue.append(queued)
        sweep.view.retrying(queued.cfg)
    return queued is not None
