"""Submitting a run's jobs through the sweep's executor: its training job, then (a scheduler) its evaluation job with
afterok, or several runs' first jobs as one group; every job goes to the ledger.

A scheduler that cannot take a job now (SchedulerUnavailable) ends nothing: what was not submitted goes back to the
sweep's queue and is submitted at the next look."""

from __future__ import annotations

from tunelab.errors import TunelabError
from tunelab.execute import claims
from tunelab.execute.coordinator import Submission, Sweep
from tunelab.execute.executor import Executor, GroupKind, JobGroup, JobKind, SchedulerUnavailable
from tunelab.ledger import store as ledger
from tunelab.rundir import now_iso
from tunelab.rundir.config import RunConfig

UNREACHABLE_S = 600.0  # a scheduler that has not answered for this long ends a sweep that waits on it


def check_reachable(ex: Executor) -> None:
    """Raise when the scheduler has not answered for UNREACHABLE_S (instead of waiting forever)."""
    silent = ex.unanswered()
    if silent is not None and silent[0] > UNREACHABLE_S:
        raise TunelabError(f"{ex.name}: the scheduler has not answered for {UNREACHABLE_S:.0f} s "
                           f"({silent[1] or 'no answer'}); jobs already submitted keep "
                           "running: `tunelab run` again later follows them")


def _record(sweep: Sweep, cfg: RunConfig, kind: JobKind, job_id: str, reason: str, dep: str | None = None) -> int:
    row = ledger.record_job(sweep.book, run=cfg.name, kind=kind, job_id=job_id, attempt=cfg.attempt,
                            executor=sweep.ex.name, depends_on=dep,
                            time_limit=sweep.ex.time_limit(cfg) if kind == JobKind.TRAIN else None,
                            submitted_at=now_iso("milliseconds"),  # a dispatch's start
                            state=sweep.ex.first_state, reason=reason)
    sweep.started.add(cfg.name)
    sweep.running[row] = cfg.name
    return row


def _submitted(sweep: Sweep, cfg: RunConfig) -> None:
    """The run's next job is the executor's now: where that job outlives us, so does nobody's claim."""
    if sweep.ex.detached:
        claims.release(cfg.run_dir)


def submit_run(sweep: Sweep, s: Submission, env: dict[str, str], where: str) -> dict[JobKind, str]:
    """Submit a run's train job and/or eval job (afterok on the train job, or on `s.after`)."""
    ids: dict[JobKind, str] = {}
    dep = s.after
    for kind in (JobKind.TRAIN, JobKind.EVAL):
        if not (s.train if kind == JobKind.TRAIN else s.evaluate):
            continue
        script = sweep.ex.script(s.cfg, kind, write=not sweep.dry_run)
        reason = f"{s.reason} ({where})" if where else s.reason
        if sweep.dry_run:
            job_id = f"<{s.cfg.name}:{kind}>"
            sweep.view.say("would submit: {}  [dim]# {}[/dim]", sweep.ex.command(script, dep), s.reason)
        else:
            try:
                job_id = sweep.ex.submit(script, dep, env or None)
            except SchedulerUnavailable as exc:
                _later(sweep, s, kind, dep, exc)
                return ids
            sweep.said_unreachable = False
            _record(sweep, s.cfg, kind, job_id, reason, dep)
            sweep.view.submitted(s.cfg, kind, job_id, dep, s.reason, where)
        ids[kind] = dep = job_id
    if not sweep.dry_run:
        _submitted(sweep, s.cfg)
    return ids


def _later(sweep: Sweep, s: Submission, kind: JobKind, dep: str | None, exc: SchedulerUnavailable) -> None:
    """The scheduler did not take `s`'s `kind` job: queue what is left of `s` for the next look."""
    rest = s if kind == JobKind.TRAIN else Submission(s.cfg, False, True, s.reason, dep)
    sweep.queue.insert(0, rest)
    if not sweep.said_unreachable:
        sweep.view.say("[yellow]{}: {}[/yellow]", s.cfg.name, exc.message)
        sweep.said_unreachable = True


def submit_group(sweep: Sweep, group: JobGroup, reason: str) -> list[str]:
    """These runs' training jobs as one submission, then (an array) each run's evaluation job on its own task; a node
    job trains and evaluates its runs itself, each run getting rows with its id."""
    cfgs = list(group.runs)
    script, array = sweep.ex.group_script(group, write=not sweep.dry_run)
    names = ", ".join(c.name for c in cfgs)
    if sweep.dry_run:
        what = f"node job: {names}; {reason}" if group.kind == GroupKind.NODE else reason
        sweep.view.say("would submit: {}  [dim]# {}[/dim]", sweep.ex.command(script, None, array), what)
        job_ids = ["<node>"] * len(cfgs) if group.kind == GroupKind.NODE else [f"<array>_{i}" for i in range(len(cfgs))]
    else:
        job_id = sweep.ex.submit(script, array=array)
        job_ids = [job_id] * len(cfgs) if group.kind == GroupKind.NODE else [f"{job_id}_{i}" for i in range(len(cfgs))]
        for cfg, jid in zip(cfgs, job_ids):
            _record(sweep, cfg, JobKind.TRAIN, jid,
                    f"{reason} ({'node job' if group.kind == GroupKind.NODE else 'job array'})")
            if group.kind == GroupKind.NODE:
                _record(sweep, cfg, JobKind.EVAL, jid, f"{reason} (node job)")
        if group.kind == GroupKind.NODE and len(cfgs) == 1:
            sweep.view.say("submitted job {} for {}: its training, then its evaluation", job_id, names)
        elif group.kind == GroupKind.NODE:
            sweep.view.say("submitted node job {} for {} runs: {}", job_id, len(cfgs), names)
        else:
            sweep.view.say("submitted job array {} (--array={}): {}", job_id, array,
                           ", ".join(f"{c.name} {i}" for c, i in zip(cfgs, job_ids)))
    if group.kind == GroupKind.ARRAY:
        for cfg, jid in zip(cfgs, job_ids):
            submit_run(sweep, Submission(cfg, False, True, reason, jid), {}, "")
    elif not sweep.dry_run:
        for cfg in cfgs:
            _submitted(sweep, cfg)
    return job_ids
