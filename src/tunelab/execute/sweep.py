"""`tunelab run`: one sweep for every executor, in the spirit of submitit — the loop never looks behind the Executor.

Under the experiment lock: refresh and judge the jobs, apply retries, choose and claim what to start; start what the
executor has room for; look again every poll interval until nothing is queued or open. Idempotent: completed, queued and
running runs are skipped, interrupted ones resume, --force starts from scratch. The coordinator is the only writer of
tunelab.db."""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console

from tunelab.execute import claims, retry
from tunelab.execute.attempts import all_attempts
from tunelab.execute.coordinator import Submission, Sweep
from tunelab.execute.executor import Capacity, Executor, GroupKind, JobKind, SchedulerUnavailable, ScriptCheck
from tunelab.execute.executors import check_options, executor_class
from tunelab.execute.failures import COMPLETED, PREEMPTED, Failure
from tunelab.execute.jobs import JobRow, RunJobs, all_jobs, is_active, latest_jobs
from tunelab.execute.local_jobs import TRAIN_LOG
from tunelab.execute.refresh import refresh
from tunelab.execute.status import RowState, status_row
from tunelab.execute.submit import check_reachable, submit_group, submit_run
from tunelab.execute.sweep_view import view_for
from tunelab.ledger import store as ledger
from tunelab.rundir import layout, now_iso
from tunelab.rundir.config import RunConfig, load_run_config
from tunelab.rundir.experiment import is_evaluated, load_runs, select_runs, task_names, training_state
from tunelab.rundir.status import read_status

OUTPUTS = (layout.TRAINER_STATE_DIR, layout.CHECKPOINTS_DIR, layout.EVAL_DIR, layout.METRICS_FILE,
           layout.STATUS_FILE, layout.SUMMARY_FILE, layout.PACKING_FILE, TRAIN_LOG, layout.SAMPLES_FILE)


def clear_outputs(run_dir: Path) -> None:
    """Remove everything a previous attempt wrote (for --force), keeping run.yaml and the job scripts."""
    for name in OUTPUTS:
        p = run_dir / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def pending(sweep: Sweep, selected: list[str], force: bool) -> list[Submission]:
    """The submissions to make, each run claimed then read, so a run just finished is not started again."""
    latest = latest_jobs(sweep.book)
    queued = {s.cfg.name for s in sweep.queue}  # retries judged a moment ago
    out = []
    for name in selected:
        cfg = sweep.runs[name]
        if name in queued or (cfg.kind != "finetune" and not sweep.ex.detached):
            continue
        held_by = claims.claim(cfg.run_dir)
        if held_by is not None:
            sweep.view.say("[yellow]skip {}: claimed by another coordinator ({})[/yellow]", name, held_by)
            continue
        sub = _next_jobs(sweep, cfg, latest.get(name, RunJobs()), force)
        if sub is None:
            claims.release(cfg.run_dir)
        else:
            out.append(sub)
    return out


def _next_jobs(sweep: Sweep, cfg: RunConfig, rj: RunJobs, force: bool) -> Submission | None:
    evaluates = sweep.ex.detached  # a scheduler runs each run's evaluation after its training (afterok)
    if cfg.kind != "finetune":  # controls and eval-only checkpoints: an evaluation job only
        if (is_evaluated(cfg.run_dir, task_names(cfg)) and not force) or is_active(rj.eval):
            return None
        if force and not sweep.dry_run:
            clear_outputs(cfg.run_dir)
        return Submission(cfg, False, True, f"{cfg.kind.replace('_', '-')} evaluation")
    if rj.train is not None and rj.train.active:
        if rj.train.executor != sweep.ex.name or not evaluates:
            sweep.view.say("[yellow]skip {}: running elsewhere ({} job {})[/yellow]", cfg.name, rj.train.executor,
                           rj.train.job_id)
            return None
        if not is_active(rj.eval) and not (rj.eval and rj.eval.depends_on == rj.train.job_id):
            return Submission(cfg, False, True, "evaluation after the queued training job", rj.train.job_id)
        return None
    state = training_state(cfg.run_dir)
    # a live process here (status.json written on this host: its pid says), or a job nobody recorded; a scheduler's
    # verdict wins over another host's status
    if state == layout.RUNNING and (rj.train is None or read_status(cfg.run_dir).host == socket.gethostname()):
        sweep.view.say("[yellow]skip {}: running elsewhere (its job is alive)[/yellow]", cfg.name)
        return None
    if state == layout.COMPLETED and not force:
        if not evaluates or is_evaluated(cfg.run_dir, task_names(cfg)) or is_active(rj.eval):
            sweep.view.say("[dim]skip {}: completed[/dim]", cfg.name)
            return None
        return Submission(cfg, False, True, "evaluation of the completed run")
    if force and not sweep.dry_run and not is_active(rj.eval):
        clear_outputs(cfg.run_dir)
        state = layout.PENDING
    if rj.train is None:
        reason = "first submission" if state == layout.PENDING else f"was {state}: resumes from its last checkpoint"
    else:
        reason = f"resubmission after {rj.train.failure or rj.train.state} (job {rj.train.job_id})"
    return Submission(cfg, True, evaluates, reason)


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


HEARTBEAT_S = 60.0  # claims touched this often, for coordinators on other hosts


def run_sweep(ex: Executor, experiment_dir: str | Path, names: list[str] | None = None, *, force: bool = False,
              dry_run: bool = False, wait: bool = False, console: Console | None = None,
              record: bool = True, warm_if: ScriptCheck | None = None) -> dict[str, RowState]:
    """Start what is pending on `ex` and follow it (with `wait` on a scheduler); returns {run: RowState} of the runs
    started or followed. record=False: inside a Slurm node job. `warm_if`: training jobs whose job script it passes
    may start warm (a lane's later jobs skip the stack's imports: Executor.warm_starts; the local executor only)."""
    check_options(ex, dry_run, wait)
    exp = Path(experiment_dir).resolve()
    with ExitStack() as stack:
        if warm_if is not None and not dry_run:
            stack.enter_context(ex.warm_starts(warm_if))
        book = exp if record else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tunelab-node-")))
        runs = {r.name: r for r in load_runs(exp)}
        selected = [r.name for r in select_runs(list(runs.values()), names)]
        sweep = Sweep(exp, book, ex, runs, view_for(ex, console or Console()), dry_run)
        for notice in ex.notices():
            sweep.view.say(notice)
        try:
            return _run(sweep, selected, force, wait)
        finally:
            claims.release_all()
            if record:
                ledger.ingest_all(exp, list(sweep.runs.values()))


def _run(sweep: Sweep, selected: list[str], force: bool, wait: bool) -> dict[str, RowState]:
    """wait: also follow the selected runs' jobs that earlier sweeps submitted."""
    with claims.experiment_lock(sweep.exp):  # before torch is imported: a second coordinator skips at once
        _look(sweep, None)
        sweep.queue += pending(sweep, selected, force)
    followed = {j.run for j in sweep.open_jobs(selected)} if wait else set()
    if not sweep.queue:
        sweep.view.say("nothing to {}: every selected run is completed, queued, running or claimed by another "
                       "coordinator", "submit" if sweep.ex.detached else "run")
        if not followed:
            return {}
    if sweep.dry_run:
        _submit_groups(sweep, None)
        for s in sweep.queue:
            submit_run(sweep, s, {}, "")
        return {}
    capacity = sweep.ex.capacity([s.cfg for s in sweep.queue])
    _refuse_impossible(sweep, capacity)
    try:
        with sweep.view.live(len(sweep.queue)):
            _loop(sweep, capacity, followed, wait or not sweep.ex.detached)
    except KeyboardInterrupt:
        if not sweep.ex.detached:  # jobs that cannot outlive us: SIGTERM, each trainer saves, then stops
            sweep.ex.cancel([j.job_id for j in sweep.open_jobs(sweep.started)])
        raise
    latest = latest_jobs(sweep.book)
    return {name: status_row(cfg, latest.get(name)).state for name, cfg in sweep.runs.items()
            if name in followed or name in sweep.started}


def _refuse_impossible(sweep: Sweep, capacity: Capacity) -> None:
    """Drop (and release) what can never start here; order the rest as the executor starts them."""
    for s in list(sweep.queue):
        why = capacity.never(s.cfg)
        if why is not None:
            sweep.view.say("[red]{}: {}; not started[/red]", s.cfg.name, why)
            sweep.queue.remove(s)
            claims.release(s.cfg.run_dir)
    rank = {cfg.name: i for i, cfg in enumerate(capacity.order([s.cfg for s in sweep.queue]))}
    sweep.queue.sort(key=lambda s: rank[s.cfg.name])


def _loop(sweep: Sweep, capacity: Capacity, followed: set[str], follow: bool) -> None:
    touched = time.monotonic()
    poll_s = sweep.ex.poll_interval(list(sweep.runs.values()))
    first = True
    while True:
        with claims.experiment_lock(sweep.exp):
            if not first:
                _look(sweep, capacity)
            _start_what_fits(sweep, capacity)
        first = False
        sweep.view.tick(sweep.runs)
        if not sweep.queue and not (follow and (sweep.open_jobs(followed | sweep.started) or sweep.running)):
            return
        check_reachable(sweep.ex)
        if time.monotonic() - touched > HEARTBEAT_S:
            claims.touch_all()  # heartbeat for coordinators on other hosts
            touched = time.monotonic()
        time.sleep(poll_s)


def _look(sweep: Sweep, capacity: Capacity | None) -> None:
    """Refresh and judge the open jobs, free the room of the judged ones, apply retries (they join the queue)."""
    for job in refresh(sweep.book, sweep.runs, {sweep.ex.name: sweep.ex}, reachable_only=True):
        if job.failure is not None and job.id not in sweep.running:
            sweep.view.ended(job)
    if sweep.running:
        rows = {j.id: j for j in all_jobs(sweep.book)}
        judged = [rows[row] for row in sweep.running if not rows[row].open]  # here, or by `status`/`cancel`
        seen = sweep.ex.poll([j.job_id for j in judged]) if judged else {}
        for job in judged:
            info = (seen or {}).get(job.job_id)
            if info is not None and not info.ended:
                continue  # cancelled, and still stopping (a trainer saves first): its room is not free yet
            del sweep.running[job.id]
            sweep.view.ended(job)
            if capacity is not None:
                capacity.release(job.run)
    if not sweep.dry_run:
        handle_ended(sweep)


def _submit_groups(sweep: Sweep, capacity: Capacity | None) -> None:
    """Runs whose first jobs go as one submission (a job array, a node job), when there is room."""
    for group in sweep.ex.groups([s.cfg for s in sweep.queue if s.groupable]):
        jobs = 1 if group.kind == GroupKind.NODE else 0  # an array is throttled by Slurm itself (%N)
        if capacity is not None and jobs and capacity.take(group.runs[0], jobs, sweep.active_count()) is None:
            continue
        names = {c.name for c in group.runs}
        reason = next(s.reason for s in sweep.queue if s.cfg.name == group.runs[0].name)
        waiting = sweep.queue
        sweep.queue = [s for s in sweep.queue if s.cfg.name not in names]
        try:
            submit_group(sweep, group, reason)
        except SchedulerUnavailable as exc:  # nothing submitted: the group waits for the next look
            sweep.queue = waiting
            if not sweep.said_unreachable:
                sweep.view.say("[yellow]{}[/yellow]", exc.message)
                sweep.said_unreachable = True
            return


def _start_what_fits(sweep: Sweep, capacity: Capacity) -> None:
    """Groups first, then each queued run the executor has room for now, in the executor's order."""
    _submit_groups(sweep, capacity)
    waited = False
    active = sweep.active_count()
    for s in list(sweep.queue):
        env = capacity.take(s.cfg, s.jobs, active)
        if env is None:
            waited = True
            continue
        sweep.queue.remove(s)
        submit_run(sweep, s, env, capacity.where(s.cfg))
        active += s.jobs
    if waited and capacity.waiting() and not sweep.said_waiting:
        sweep.view.say("[dim]{}[/dim]", capacity.waiting())
        sweep.said_waiting = True


__all__ = ["RowState", "Submission", "check_options", "run_sweep"]
