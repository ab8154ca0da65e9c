"""Save before being stopped, so a time limit or a preemption loses at most one checkpoint interval.

Slurm warns with SIGUSR1 before the limit and sends SIGTERM when it preempts or cancels; either only sets a flag, and at
the next optimizer step the trainer saves a complete checkpoint and stops. After SIGUSR1 the job requeues itself (same
id: its evaluation's afterok holds), only when this start made progress, so a run that cannot advance never loops.
`checkpoint_every` bounds what a kill without warning loses."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.rundir.layout import SAVED_BEFORE_LIMIT
from tunelab.rundir.status import StatusWriter, now_iso, read_status

WARN_SIGNAL = signal.SIGUSR1  # Slurm's warning before the time limit
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
REQUEUE_KILL_WAIT_S = 300.0  # Slurm ends a requeued job within KillWait (30 s by default)


class TrainingStopped(TunelabError):
    """Training stopped on a signal after saving a complete checkpoint at `step` (one line at the CLI)."""

    def __init__(self, signum: int, step: int):
        self.signum, self.step = signum, step
        why = SAVED_BEFORE_LIMIT if signum == WARN_SIGNAL else "saved on " + signal.Signals(signum).name
        super().__init__(f"{why}: stopped at step {step} after checkpoint-{step}")


@dataclass
class SignalWatch:
    """Remembers the first stop signal received (handlers only set a flag: saving happens at a step end)."""

    received: int | None = None
    _previous: dict = field(default_factory=dict)

    def install(self) -> SignalWatch:
        """Catch the stop signals; a signal an enclosing watch already caught (the job's, before training) counts as
        received here too, so training stops at its first step."""
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                previous = self._previous[s] = signal.signal(s, self._handle)
                outer = getattr(previous, "__self__", None)
                if isinstance(outer, SignalWatch) and self.received is None:
                    self.received = outer.received
        return self

    def restore(self) -> None:
        """Put back the handlers found at install: after training a signal acts as usual again (a process
        that trained in-process, e.g. a test or the demo, must not ignore SIGTERM for the rest of its life)."""
        for s, previous in self._previous.items():
            signal.signal(s, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:  # noqa: ARG002 - signal handler signature
        if self.received is None:  # later ones change nothing (Slurm may deliver SIGTERM more than once)
            self.received = signum
            # said when it arrives, not at the step's end: the log then shows how long the save and stop took.
            # os.write, not print: a handler that prints while the interrupted code prints raises (reentrant call)
            with contextlib.suppress(OSError):
                os.write(1, f"[tunelab train] {signal.Signals(signum).name} received: saving at this step's end, "
                            f"then stopping (if still training)\n".encode())


def make_checkpoint_policy(every_steps: int | None, every_s: float | None, watch: SignalWatch,
                           agree: Callable[[bool], bool] | None = None):
    """A TrainerCallback saving every N steps or S seconds, and saving then stopping on a stop signal."""
    from transformers import TrainerCallback

    class CheckpointPolicy(TrainerCallback):
        last_save = time.monotonic()
        saved_step = -1

        def on_step_end(self, args, state, control, **kwargs):
            stop = watch.received is not None
            due = bool(every_s and time.monotonic() - self.last_save >= every_s)
            if agree is not None:  # a signal reaches processes at different steps; clocks differ
                stop = agree(stop)
                due = agree(due) if every_s else False
            if stop:
                control.should_save = True
                control.should_training_stop = True
            elif (every_steps and state.global_step % every_steps == 0) or due:
                control.should_save = True
            return control

        def on_epoch_end(self, args, state, control, **kwargs):
            if self.saved_step == state.global_step:  # saved at this very step already (interval or signal)
                control.should_save = False
            return control

        def on_save(self, args, state, control, **kwargs):
            self.last_save, self.saved_step = time.monotonic(), state.global_step

    return CheckpointPolicy()


def requeue_self(status: StatusWriter, log) -> bool:
    """`scontrol requeue` this Slurm job (it restarts from its script, resuming); False outside Slurm or when refused.
    status.json says so before the call, since Slurm's SIGTERM can end this process before `scontrol` returns; a refused
    requeue takes that back."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return False
    status.write(requeued_job=job, requeued_at=now_iso())
    log(f"requeuing job {job}: it resumes from the checkpoint just saved")
    refused = None
    for command in _requeue_commands(job):
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=60)
            refused = (proc.stderr or proc.stdout).strip() if proc.returncode != 0 else None
        except (OSError, subprocess.TimeoutExpired) as exc:
            refused = str(exc)
        if refused is not None:
            break
    if refused is None:
        return True
    status.write(requeued_job=None, requeued_at=None)
    log(f"could not requeue job {job}: {refused}")
    return False


def _requeue_commands(job: str) -> list[list[str]]:
    """`scontrol requeue`, preceded in a multi-node job by allowing it: such a job runs --no-requeue, so a node failure
    goes to tunelab's retry instead of a silent requeue, and Slurm refuses until its Requeue flag is set."""
    allow = [["scontrol", "update", f"JobId={job}", "Requeue=1"]]
    return (allow if int(os.environ.get("SLURM_JOB_NUM_NODES") or 1) > 1 else []) + [["scontrol", "requeue", job]]


def after_stop(stop: TrainingStopped, resumed_from: Path | None, status: StatusWriter, log) -> None:
    """Stopped on Slurm's warning: requeue when this start advanced the run; else the job ends (TIMEOUT)."""
    log(str(stop))
    start = int(resumed_from.name.removeprefix("checkpoint-")) if resumed_from else 0
    if stop.signum == WARN_SIGNAL and stop.step > start:
        requeue_self(status, log)


def await_requeue_kill(run_dir: Path, log, wait_s: float = REQUEUE_KILL_WAIT_S) -> None:
    """After this job requeued itself, let Slurm end it: a script exiting first can be recorded FAILED and cancel the
    evaluation job. Returns at once outside a self-requeued job, after `wait_s` at most."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job or read_status(run_dir).requeued_job != job:
        return
    log(f"waiting for Slurm to end job {job} for its requeue")
    end = time.monotonic() + wait_s
    while time.monotonic() < end:
        time.sleep(1.0)
