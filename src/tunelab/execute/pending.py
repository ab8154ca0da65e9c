"""What a sweep starts: each selected run's next jobs, or why none. The runs chosen are claimed (execute/claims.py), so
call it under the experiment lock. Where jobs outlive the coordinator, each evaluation is submitted behind its training;
a sweep running jobs here trains only (`tunelab eval` evaluates)."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from tunelab.execute import claims
from tunelab.execute.coordinator import Submission, Sweep
from tunelab.execute.jobs import RunJobs, is_active, latest_jobs
from tunelab.execute.local_jobs import TRAIN_LOG
from tunelab.rundir import layout
from tunelab.rundir.config import RunConfig
from tunelab.rundir.experiment import is_evaluated, task_names, training_state
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
