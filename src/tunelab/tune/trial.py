"""One trial as a real run on the sweep's executor: its run directory written, its training job submitted (or the
job a killed search left running followed again), its validation losses reported to Optuna as metrics.jsonl gains
them, and the job cancelled (SIGTERM: the trainer stops cleanly) once the pruner says so.

Each reported validation is judged in file order whether the search reads it live or after the job ended, so the
outcome depends on the losses, never on when they were read."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from tunelab.execute.executor import Executor, JobKind
from tunelab.fsutil import atomic_write_json, read_json
from tunelab.rundir import now_iso, read_metrics, read_status
from tunelab.rundir.config import RunConfig, save_run_config
from tunelab.rundir.layout import COMPLETED
from tunelab.rundir.tuned import Pruned, read_pruned, write_pruned
from tunelab.scaffold.write import write_job_script

JOB_FILE = "tune_job.json"  # {executor, job}: the trial's job, so a search started again follows it
STOP_WAIT_S = 120.0  # how long a cancelled job may take to save and stop
ATTEMPTS = 2  # a trial whose job ended without completing is started again once (the trainer resumes it)


@dataclass(frozen=True)
class TrialOutcome:
    """How a trial ended for Optuna: its state, and its objective (the last validation loss it reached)."""

    state: TrialState
    value: float | None
    step: int | None


def submit(ex: Executor, cfg: RunConfig) -> str:
    """Write the trial's run directory (run.yaml, job script) and start its training job; the job id is recorded."""
    save_run_config(cfg)
    write_job_script(cfg, sys.executable)
    script = ex.script(cfg, JobKind.TRAIN)
    room = ex.capacity([cfg])
    env = room.take(cfg, 1, 0)
    job = ex.submit(script, env=env or {})
    atomic_write_json(cfg.run_dir / JOB_FILE, {"executor": ex.name, "job": job})
    return job


def live_job(ex: Executor, run_dir: Path) -> str | None:
    """The job a previous search started for this trial, while the executor still sees it queued or running."""
    record = read_json(run_dir / JOB_FILE, default=None)
    if not isinstance(record, dict) or record.get("executor") != ex.name or not record.get("job"):
        return None
    job = str(record["job"])
    info = (ex.poll([job]) or {}).get(job)
    return job if info is not None and not info.ended else None


def _ended(ex: Executor, job: str | None) -> bool:
    if job is None:
        return True
    info = (ex.poll([job]) or {}).get(job)
    return info is not None and info.ended


def stop(ex: Executor, job: str | None, interval: float) -> None:
    """Cancel the job and wait until it has ended (the trainer saves and exits on SIGTERM)."""
    if job is None:
        return
    ex.cancel([job])
    end = time.monotonic() + STOP_WAIT_S
    while not _ended(ex, job) and time.monotonic() < end:
        time.sleep(interval)


class TrialRun:
    """Follows one trial's job, reporting each new validation loss to Optuna in step order."""

    def __init__(self, ex: Executor, cfg: RunConfig, trial: optuna.Trial, reported: set[int]):
        self.ex, self.cfg, self.trial = ex, cfg, trial
        self.reported = set(reported)  # steps Optuna already has (a resumed trial)
        self.interval = ex.poll_interval([cfg])

    def run(self) -> TrialOutcome:
        """Start or follow the job to its end (restarting it once if it stopped early) or to its pruning."""
        marked = read_pruned(self.cfg.run_dir)
        if marked is not None:  # pruned by a search killed before it told Optuna so
            return TrialOutcome(TrialState.PRUNED, marked.value, marked.step)
        for _ in range(ATTEMPTS):
            done = read_status(self.cfg.run_dir).state == COMPLETED
            job = None if done else (live_job(self.ex, self.cfg.run_dir) or submit(self.ex, self.cfg))
            try:
                pruned = self._follow(job)
            except KeyboardInterrupt:  # Ctrl-C: a local job would train on unwatched; it saves and stops instead,
                if not self.ex.detached:  # and the search started again resumes it (a queued job stays queued)
                    stop(self.ex, job, self.interval)
                raise
            if pruned is not None:
                return pruned
            if read_status(self.cfg.run_dir).state == COMPLETED:
                return self._finished()
        return TrialOutcome(TrialState.FAIL, None, None)

    def _follow(self, job: str | None) -> TrialOutcome | None:
        """Report validations until the job ends; the pruned outcome if the pruner stopped it."""
        while True:
            ended = _ended(self.ex, job)  # asked before reading: rows written before the end are all read below
            for step, value in self._new_validations():
                if self._report(step, value):
                    return self._prune(job, step, value)
            if ended:
                return None
            time.sleep(self.interval)

    def _new_validations(self) -> list[tuple[int, float]]:
        rows = [r for r in read_metrics(self.cfg.run_dir) if r.is_validation and r.step is not None]
        return [(r.step, r.val_loss) for r in rows if r.step not in self.reported  # type: ignore[misc]
                and r.val_loss is not None]

    def _report(self, step: int, value: float) -> bool:
        """Report one validation; whether the trial is to be pruned there (a diverged loss is, at once)."""
        self.reported.add(step)
        if math.isfinite(value):
            self.trial.report(value, step)
        return not math.isfinite(value) or self.trial.should_prune()

    def _prune(self, job: str | None, step: int, value: float) -> TrialOutcome:
        """Stop the job (it may have finished meanwhile: then it is judged all the same) and mark the directory."""
        stop(self.ex, job, self.interval)
        stopped = read_status(self.cfg.run_dir).state != COMPLETED
        write_pruned(self.cfg.run_dir, Pruned(step=step, value=value, at=now_iso(), stopped=stopped))
        return TrialOutcome(TrialState.PRUNED, value, step)

    def _finished(self) -> TrialOutcome:
        rows = [r for r in read_metrics(self.cfg.run_dir) if r.is_validation and r.val_loss is not None]
        if not rows or not math.isfinite(rows[-1].val_loss or math.nan):
            return TrialOutcome(TrialState.FAIL, None, None)
        return TrialOutcome(TrialState.COMPLETE, rows[-1].val_loss, rows[-1].step)
