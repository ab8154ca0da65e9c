"""`tunelab run`: one sweep for every executor, in the spirit of submitit — the loop never looks behind the Executor.

Under the experiment lock: refresh and judge the jobs, apply retries, choose and claim what to start; start what the
executor has room for; look again every poll interval until nothing is queued or open. Idempotent: completed, queued and
running runs are skipped, interrupted ones resume, --force starts from scratch. The coordinator is the only writer of
tunelab.db."""

from __future__ import annotations

import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console

from tunelab.execute import claims
from tunelab.execute.coordinator import Submission, Sweep
from tunelab.execute.executor import Capacity, Executor, GroupKind, SchedulerUnavailable
from tunelab.execute.executors import check_options
from tunelab.execute.follow import handle_ended
from tunelab.execute.jobs import all_jobs, latest_jobs
from tunelab.execute.pending import pending
from tunelab.execute.refresh import refresh
from tunelab.execute.status import RowState, status_row
from tunelab.execute.submit import check_reachable, submit_group, submit_run
from tunelab.execute.sweep_view import view_for
from tunelab.ledger import store as ledger
from tunelab.rundir.experiment import load_runs, select_runs

HEARTBEAT_S = 60.0  # claims touched this often, for coordinators on other hosts


def run_sweep(ex: Executor, experiment_dir: str | Path, names: list[str] | None = None, *, force: bool = False,
              dry_run: bool = False, wait: bool = False, console: Console | None = None,
              record: bool = True) -> dict[str, RowState]:
    """Start what is pending on `ex` and follow it (with `wait` on a scheduler); returns {run: RowState} of the runs
    started or followed. record=False: inside a Slurm node job."""
    check_options(ex, dry_run, wait)
    exp = Path(experiment_dir).resolve()
    with ExitStack() as stack:
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
