"""One trial as a real run on the sweep's executor: its job submitted (or followed again after a kill), validation
losses reported to Optuna as they come, the job cancelled once pruned. Judged by its last validation loss or its
evaluation job (tune/trial_eval.py); validations are judged in file order, so the outcome never depends on when they
were read."""

from __future__ import annotations

import math
import sys
import threading
import time
from dataclasses import dataclass, field

import optuna
from optuna.trial import TrialState

from tunelab.console import say
from tunelab.errors import TunelabError
from tunelab.execute.executor import Executor, JobKind
from tunelab.execute.failures import OOM, Failure, classify
from tunelab.execute.retry import apply, decide, differs_only_by_retries
from tunelab.rundir import now_iso, read_metrics, read_status
from tunelab.rundir.config import RUN_FILE, RunConfig, load_run_config, save_run_config
from tunelab.rundir.layout import COMPLETED
from tunelab.rundir.tuned import JOB_FILE, Pruned, read_pruned, write_pruned
from tunelab.scaffold.write import write_job_script
from tunelab.tune.trial_eval import TrialEvaluation, evaluate_trial, record_job, recorded_job

__all__ = ["JOB_FILE", "Lane", "TrialOutcome", "TrialRun", "submit", "stop"]

STOP_WAIT_S = 120.0  # how long a cancelled job may take to save and stop
LOCAL_LOOK_S = 0.1  # a trial on this machine is looked at this often: its lane's next trial waits for its end


@dataclass(frozen=True)
class TrialOutcome:
    """How a trial ended for Optuna: its state, its objective (the last validation loss it reached; for an
    evaluated objective, the metric on its last checkpoint) and why it failed ('' otherwise)."""

    state: TrialState
    value: float | None
    step: int | None
    error: str = ""


def healed_config(cfg: RunConfig) -> RunConfig:
    """The trial's run as its directory has it when only a retry changed it (a smaller micro-batch after an OOM,
    attempt > 1): a search started again goes on from the healed run, not from the one that failed."""
    if not (cfg.run_dir / RUN_FILE).is_file():
        return cfg
    try:
        there = load_run_config(cfg.run_dir)
    except (OSError, ValueError, TunelabError):
        return cfg
    return there if there.attempt > 1 and differs_only_by_retries(there, cfg) else cfg


@dataclass(frozen=True)
class Lane:
    """Where a trial's jobs run when combinations are searched side by side: the executor's environment for its share,
    and the search's stop signal (Ctrl-C lands in the main thread only)."""

    env: dict[str, str] | None = None
    stopping: threading.Event = field(default_factory=threading.Event)


def submit(ex: Executor, cfg: RunConfig, env: dict[str, str] | None = None) -> str:
    """Write the trial's run directory and start its training job (`env`: its lane's share), recording the job id."""
    save_run_config(cfg)
    write_job_script(cfg, sys.executable)
    script = ex.script(cfg, JobKind.TRAIN)
    if env is None:
        env = ex.capacity([cfg]).take(cfg, 1, 0)
    job = ex.submit(script, env=env or {})
    record_job(ex, cfg.run_dir, "job", job)
    return job


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

    def __init__(self, ex: Executor, cfg: RunConfig, trial: optuna.Trial, reported: set[int],
                 evaluation: TrialEvaluation | None = None, lane: Lane | None = None):
        self.ex, self.cfg, self.trial, self.evaluation = ex, healed_config(cfg), trial, evaluation
        self.lane = lane or Lane()
        self.reported = set(reported)  # steps Optuna already has (a resumed trial)
        # a look at a local trial reads its metrics and a process's state: cheap, and its end (or a pruned one's
        # stop) seen sooner starts the lane's next trial sooner; a scheduler is asked at its own pace
        self.interval = ex.poll_interval([cfg]) if ex.detached else min(ex.poll_interval([cfg]), LOCAL_LOOK_S)

    def run(self) -> TrialOutcome:
        """Start or follow the job to its end or pruning; an early end is retried as the sweep's runs are."""
        marked = read_pruned(self.cfg.run_dir)
        if marked is not None:  # pruned by a search killed before it told Optuna so
            return TrialOutcome(TrialState.PRUNED, marked.value, marked.step)
        restarted = False
        while True:
            done = read_status(self.cfg.run_dir).state == COMPLETED
            job = None if done else (recorded_job(self.ex, self.cfg.run_dir) or submit(self.ex, self.cfg,
                                                                                       self.lane.env))
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
            failure = self._failure(job)
            decision = decide(self.cfg, failure, type(self.ex))
            if decision.retry:
                self.cfg = apply(decision)  # a new run.yaml (attempt + 1); its job starts from it
                say("{}: {}", self.cfg.name, decision.reason)  # the retry's reason, as the sweep says it
            elif restarted or failure.kind == OOM:
                return TrialOutcome(TrialState.FAIL, None, None, decision.reason)
            restarted = True

    def _failure(self, job: str | None) -> Failure:
        """How the trial's last job ended: the scheduler's word, its log and the run's status.json."""
        info = (self.ex.poll([job]) or {}).get(job) if job is not None else None
        log = self.ex.output(self.cfg.run_dir, JobKind.TRAIN, job) if job is not None else ""
        return classify(info.state if info else None, info.exit_code if info else None,
                        list(info.rows) if info else [], log, read_status(self.cfg.run_dir))

    def _follow(self, job: str | None) -> TrialOutcome | None:
        """Report validations until the job ends; the pruned outcome if the pruner stopped it."""
        while True:
            if self.lane.stopping.is_set():  # the search was stopped (Ctrl-C in its main thread): as if here
                raise KeyboardInterrupt
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
            return TrialOutcome(TrialState.FAIL, None, None, "no finite validation loss")
        if self.evaluation is None:
            return TrialOutcome(TrialState.COMPLETE, rows[-1].val_loss, rows[-1].step)
        value, error = evaluate_trial(self.ex, self.cfg, self.evaluation, self.interval)
        if value is None or not math.isfinite(value):
            return TrialOutcome(TrialState.FAIL, None, rows[-1].step, error or f"{self.evaluation.objective.name} "
                                "is undefined on its samples")
        return TrialOutcome(TrialState.COMPLETE, value, rows[-1].step)
