"""The local executor: runs each pending run's job script as a subprocess on this machine.

One run at a time on CPU. Where there are GPUs (those CUDA_VISIBLE_DEVICES lets this process see), the
scheduler (execute/schedule.py) places runs longest-estimate first, a run with N processes on N GPUs,
small runs sharing a GPU up to resources.runs_per_gpu when their predicted peaks fit; each job gets
its GPUs as CUDA_VISIBLE_DEVICES.
Idempotent: completed runs are skipped; interrupted or failed runs start again and resume from
their last checkpoint; --force starts them from scratch. Each run to start is claimed first, under
the experiment lock (execute/claims.py): a second coordinator skips it instead of starting it again.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from tunelab import ledger
from tunelab.console import markup, progress_columns, say
from tunelab.execute import claims, retry
from tunelab.execute.failures import CANCELLED, COMPLETED, Failure, classify
from tunelab.execute.local_jobs import TRAIN_LOG, LocalExecutor, exit_state
from tunelab.execute.schedule import Device, Pool, RunNeed, lpt_order, visible_gpus
from tunelab.experiment import load_runs, select_runs, training_state
from tunelab.runconfig import RunConfig
from tunelab.train import status as st

OUTPUTS = (st.TRAINER_STATE_DIR, st.CHECKPOINTS_DIR, "eval", st.METRICS_FILE, st.STATUS_FILE, st.SUMMARY_FILE,
           st.PACKING_FILE, TRAIN_LOG, "gpu_samples.jsonl")


@dataclass
class _Active:
    cfg: RunConfig
    job_id: str  # the LocalExecutor's id (the job's pid), also in the ledger's jobs table (row `row`)
    row: int
    task: int
    started: str


CPU = Device("cpu")


def run_need(cfg: RunConfig, gpus_visible: int) -> RunNeed:
    """What the scheduler needs of a run: its GPUs (one per process), its estimated time and peak memory."""
    from tunelab.train.distributed import processes_per_run

    est = cfg.estimate or {}
    res = cfg.resources
    gpus = processes_per_run(res.nproc_per_run, res.gpus_per_run, gpus_visible) if gpus_visible else 1
    return RunNeed(cfg.name, gpus, est.get("seconds"), est.get("peak_memory_gib"))


def device_pool(runs: list[RunConfig]) -> tuple[Pool, bool]:
    """(pool, on GPUs): the visible GPUs, or one CPU slot (runs_per_gpu of the first run: one per sweep)."""
    gpus = visible_gpus()
    if not gpus:
        return Pool([CPU]), False
    return Pool(gpus, runs[0].resources.runs_per_gpu if runs else 1), True


def clear_outputs(run_dir: Path) -> None:
    """Remove everything a previous attempt wrote (for --force), keeping run.yaml and job.sh."""
    for name in OUTPUTS:
        p = run_dir / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def pending_runs(runs: list[RunConfig], force: bool, console: Console) -> list[RunConfig]:
    """The runs to start, each claimed by this process; call it under the experiment lock. The state is
    read after claiming: a run another coordinator finished a moment ago is not started again."""
    todo = []
    for cfg in runs:
        held_by = claims.claim(cfg.run_dir)
        if held_by is not None:
            say("[yellow]skip {}: claimed by another coordinator ({})[/yellow]", cfg.name, held_by, console=console)
            continue
        state = training_state(cfg.run_dir)
        if state == st.COMPLETED and not force:
            say("[dim]skip {}: completed[/dim]", cfg.name, console=console)
        elif state == st.RUNNING:  # even with --force: clearing a live job's files would corrupt it
            say("[yellow]skip {}: running elsewhere (its job is alive)[/yellow]", cfg.name, console=console)
        else:
            if force:
                clear_outputs(cfg.run_dir)
            elif state in (st.INTERRUPTED, st.FAILED):
                say("{}: was {}; starting again (resumes from its last checkpoint)", cfg.name, state,
                    console=console)
            todo.append(cfg)
            continue
        claims.release(cfg.run_dir)
    return todo


def _start(exp: Path, ex: LocalExecutor, cfg: RunConfig, slot: str | None, record: bool = True) -> tuple[str, int]:
    """Start the run's job through the executor interface and record it in the ledger (so `status` and
    `cancel` see it like a Slurm job). slot: the job's GPUs as CUDA_VISIBLE_DEVICES ('2,3'), or None on CPU.
    record=False inside a Slurm node job: the coordinator's ledger holds that job, not these processes."""
    job_id = ex.submit(cfg.run_dir / "job.sh", env={"CUDA_VISIBLE_DEVICES": slot} if slot is not None else None)
    if not record:
        return job_id, -1
    row = ledger.record_job(exp, run=cfg.name, kind="train", job_id=job_id, attempt=cfg.attempt, executor=ex.name,
                            submitted_at=st.now_iso(), state="RUNNING", reason=f"attempt {cfg.attempt}, "
                            f"{'GPU ' + slot if slot is not None else 'cpu'}")
    return job_id, row


def _failure(cfg: RunConfig, state: str, code: int, status: dict) -> Failure:
    """How a local attempt that did not complete ended (execute/failures.py, as for Slurm jobs)."""
    log = cfg.run_dir / TRAIN_LOG
    text = log.read_text(errors="replace")[-100_000:] if log.is_file() else ""
    text = text[text.rfind("===== tunelab run:"):]  # this attempt's lines only
    status = st.read_status(cfg.run_dir) or status
    return classify(exit_state(code), f"{max(code or 0, 0)}:0", [], text, status if state != st.RUNNING else {},
                    False)


def _finish(exp: Path, a: _Active, code: int, status: dict, queue: list[RunConfig], console: Console) -> str:
    """Judge an ended attempt and record it; queue its retry (the claim is kept) or release the claim.
    A job `tunelab cancel` stopped stays cancelled and is not retried. (a.row < 0: not in the ledger.)"""
    state = training_state(a.cfg.run_dir)
    if state == st.RUNNING:  # the process is gone; it never got to say how it ended
        state = st.INTERRUPTED if code < 0 else st.FAILED
    record = a.row >= 0
    cancelled = record and any(j["id"] == a.row and j["failure"] == CANCELLED for j in ledger.query(
        exp, "SELECT id, failure FROM jobs WHERE run = ?", (a.cfg.name,)))
    failure = Failure(COMPLETED, "completed", code) if state == st.COMPLETED else _failure(a.cfg, state, code, status)
    again = retry.decide(a.cfg, failure, executor="local") if state != st.COMPLETED and not cancelled else None
    reason = status.get("error")
    if again is not None:
        reason = f"{reason}; {again.reason}" if reason else again.reason
        say("[yellow]{}: {}[/yellow]", a.cfg.name, again.reason, console=console)
    if record and not cancelled:  # (`tunelab cancel` recorded the job's end and the attempt itself)
        ledger.update_job(exp, a.row, state=exit_state(code), exit_code=f"{max(code, 0)}:{max(-code, 0)}",
                          failure=failure.kind, detail=reason or failure.detail, handled=1)
        ledger.record_attempt(exp, run=a.cfg.name, attempt=a.cfg.attempt, executor="local",
                              job_id=a.job_id, started_at=a.started, finished_at=st.now_iso(),
                              exit_code=code, state=state, reason=reason)
    if again is not None and again.retry:
        queue.append(retry.apply(again))
    else:
        claims.release(a.cfg.run_dir)
    if record:
        ledger.ingest_all(exp, [a.cfg])
    return state


def _queue(todo: list[RunConfig], pool: Pool, visible: int, console: Console) -> list[RunConfig]:
    """The runs longest first; a run needing more GPUs than are visible is refused (and its claim released)."""
    by_name = {c.name: c for c in todo}
    queue = [by_name[need.name] for need in lpt_order([run_need(c, visible) for c in todo])]
    for cfg in [c for c in queue if not pool.fits_ever(run_need(c, visible))]:
        say("[red]{}: needs {} GPUs, {} visible (CUDA_VISIBLE_DEVICES={}); not started[/red]", cfg.name,
            run_need(cfg, visible).gpus, visible, os.environ.get("CUDA_VISIBLE_DEVICES", "unset"), console=console)
        queue.remove(cfg)
        claims.release(cfg.run_dir)
    return queue


def _start_what_fits(exp: Path, ex: LocalExecutor, queue: list[RunConfig], pool: Pool, visible: int, on_gpu: bool,
                     record: bool, progress, active: dict) -> None:
    """Longest first: start each queued run that fits the free GPUs now."""
    for cfg in list(queue):
        got = pool.place(run_need(cfg, visible))
        if got is None:
            continue
        queue.remove(cfg)
        job_id, row = _start(exp, ex, cfg, ",".join(got) if on_gpu else None, record)
        task = progress.add_task(f"  {cfg.name}" + (f" [GPU {','.join(got)}]" if on_gpu else ""), total=None)
        active[cfg.name] = _Active(cfg, job_id, row, task, st.now_iso())


def run_local(experiment_dir: str | Path, names: list[str] | None = None, force: bool = False,
              console: Console | None = None, record: bool = True) -> dict[str, str]:
    """Train every pending fine-tuned run; return {run: final state} of the runs it started.
    record=False: inside a Slurm node job (execute/slurm_pack.py), which leaves the ledger to the coordinator."""
    console = console or Console()
    exp = Path(experiment_dir).resolve()
    all_runs = load_runs(exp)
    runs = [r for r in select_runs(all_runs, names) if r.kind == "finetune"]
    with claims.experiment_lock(exp):  # before torch is imported (gpu_slots): a second `run` skips at once
        todo = pending_runs(runs, force, console)
    results: dict[str, str] = {}
    if not todo:
        say("nothing to run: every selected run is completed, running or claimed by another coordinator",
            console=console)
        if record:
            ledger.ingest_all(exp, all_runs)
        return results
    pool, on_gpu = device_pool(todo)
    visible = len(pool.devices) if on_gpu else 0
    queue = _queue(todo, pool, visible, console)
    active: dict[str, _Active] = {}
    ex = LocalExecutor()
    touched = time.monotonic()
    try:
        with Progress(*progress_columns(), console=console, transient=False) as progress:
            sweep = progress.add_task(f"sweep ({len(todo)} runs)", total=len(todo))
            while queue or active:
                _start_what_fits(exp, ex, queue, pool, visible, on_gpu, record, progress, active)
                for name, a in list(active.items()):
                    status = st.read_status(a.cfg.run_dir)
                    if status.get("total_steps"):
                        progress.update(a.task, total=status["total_steps"], completed=status.get("step", 0))
                    code = ex.exit_code(a.job_id)
                    if code is None:
                        continue
                    queued = len(queue)
                    results[a.cfg.name] = state = _finish(exp, a, code, status, queue, console)
                    if len(queue) > queued:  # a retry
                        progress.update(sweep, total=progress.tasks[sweep].total + 1)
                    mark = "[green]completed[/green]" if state == st.COMPLETED else "[red]{} (exit {})[/red]"
                    progress.update(a.task, description=markup("  {}: " + mark, a.cfg.name, state, code))
                    progress.advance(sweep)
                    del active[name]
                    pool.release(name)
                if time.monotonic() - touched > 60:
                    claims.touch_all()  # heartbeat for coordinators on other hosts
                    touched = time.monotonic()
                time.sleep(0.5)
    except KeyboardInterrupt:
        ex.cancel([a.job_id for a in active.values()])  # SIGTERM: each trainer saves, then stops
        raise
    finally:
        claims.release_all()
        if record:
            ledger.ingest_all(exp, all_runs)
    return results
