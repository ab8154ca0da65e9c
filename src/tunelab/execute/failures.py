"""Why did a job end the way it did? One verdict (FailureKind) from Slurm's accounting, the job's log and the run's own
files. The run's outputs win over the exit code: a job that finished training then failed later is "completed, job exit
N", and one that exited 0 without its outputs is failed, said as exactly that."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from tunelab.execute.job_states import UNSEEN, JobState, base_state
from tunelab.rundir.layout import COMPLETED as RUN_COMPLETED
from tunelab.rundir.layout import SAVED_BEFORE_LIMIT, STATUS_FILE, SUMMARY_FILE
from tunelab.rundir.status import Status


class FailureKind(StrEnum):
    """The verdict on an ended job (the ledger's `jobs.failure` and `attempts.state`: the values are the
    strings stored there). `completed` is a verdict too: the run's files say training completed."""

    COMPLETED = "completed"
    OOM = "oom"
    TIMEOUT = "timeout"
    PREEMPTED = "preempted"
    NODE_FAIL = "node_fail"
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def retryable(self) -> bool:
        """The retry policy may try again (execute/retry.py says how)."""
        return self in RETRYABLE


# the verdicts by name, as modules import them
COMPLETED: Final = FailureKind.COMPLETED
OOM: Final = FailureKind.OOM
TIMEOUT: Final = FailureKind.TIMEOUT
PREEMPTED: Final = FailureKind.PREEMPTED
NODE_FAIL: Final = FailureKind.NODE_FAIL
CANCELLED: Final = FailureKind.CANCELLED
FAILED: Final = FailureKind.FAILED
RETRYABLE = frozenset({OOM, TIMEOUT, PREEMPTED, NODE_FAIL})

__all__ = ["Failure", "FailureKind", "SacctRow", "classify", "exit_status", "exited_zero", "requeue_verdict"]

GPU_OOM = re.compile(r"torch\.OutOfMemoryError|OutOfMemoryError:|CUDA out of memory|torch\.cuda\.OutOfMemoryError")
HOST_OOM = re.compile(r"oom_kill event|oom-kill|Out Of Memory", re.I)
TIME_LIMIT = re.compile(r"CANCELLED AT \S+ DUE TO TIME LIMIT")
PREEMPTION = re.compile(r"CANCELLED AT \S+ DUE TO PREEMPTION")
NODE_FAILURE = re.compile(r"DUE TO NODE FAILURE|NODE_FAIL")
JOB_START = "[tunelab job]"  # the job script's first line, once per start of the job (its log is appended)
SELF_REQUEUE = "requeuing job"  # train/interrupts.py's line when the trainer requeues its job before the limit
REQUEUED_NOTE = "started again by Slurm under the same job id, resuming from its last checkpoint: no retry spent"


@dataclass
class SacctRow:
    """One `sacct --parsable2` row: the job (ID) or one of its steps (ID.batch, ID.extern)."""

    job_id: str
    state: str
    exit_code: str = ""
    elapsed: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def base_state(self) -> str:
        return base_state(self.state)


def exit_status(exit_code: str | None) -> tuple[int | None, int | None]:
    """Slurm 'EXIT:SIGNAL' -> (exit, signal)."""
    if not exit_code:
        return None, None
    parts = str(exit_code).split(":")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return None, None


@dataclass
class Failure:
    kind: FailureKind
    detail: str  # one line for people
    exit_code: int | None = None

    @property
    def retryable(self) -> bool:
        return self.kind.retryable


def classify(job_state: str | None, exit_code: str | None = None, rows: list[SacctRow] | None = None,
             log_text: str = "", status: Status | None = None, outputs_complete: bool = False,
             expected: str = STATUS_FILE) -> Failure:
    """Judge one ended job. job_state: its Slurm state, exit_code 'N:S', rows: all its sacct rows, log_text: its output,
    status: status.json, outputs_complete: the run's files say it completed (or every task scored); expected: what the
    job writes, named when it exited 0 without it."""
    rows = rows or []
    states = ({base_state(job_state)} | {r.base_state for r in rows}) - {"", UNSEEN}  # base words, known or not
    code, signal = exit_status(exit_code)
    if code is None:
        for r in rows:
            if "." not in r.job_id:
                code, signal = exit_status(r.exit_code)
    error = (status.error if status is not None else None) or ""

    if outputs_complete:
        if code not in (None, 0) or (states - {JobState.COMPLETED}):
            shown = code if code not in (None, 0) else (signal or "?")
            what = base_state(job_state) or "?"
            return Failure(COMPLETED, f"completed, job exit {shown} ({what}): training outputs are complete", code)
        return Failure(COMPLETED, "completed", 0)
    if SAVED_BEFORE_LIMIT in error:
        return Failure(TIMEOUT, "TIMEOUT: saved a checkpoint on the time-limit warning and stopped", code)
    if GPU_OOM.search(error) or GPU_OOM.search(log_text):
        line = _first_line(GPU_OOM, error) or _first_line(GPU_OOM, log_text)
        return Failure(OOM, f"GPU out of memory: {line}", code)
    if JobState.OUT_OF_MEMORY in states or HOST_OOM.search(log_text):
        return Failure(OOM, "host out of memory (Slurm OUT_OF_MEMORY / oom_kill event)", code)
    if JobState.TIMEOUT in states or TIME_LIMIT.search(log_text):
        return Failure(TIMEOUT, "TIMEOUT: the job reached its time limit", code)
    if JobState.PREEMPTED in states or PREEMPTION.search(log_text):
        return Failure(PREEMPTED, "PREEMPTED by a higher-priority job", code)
    if {JobState.NODE_FAIL, JobState.BOOT_FAIL} & states or NODE_FAILURE.search(log_text):
        return Failure(NODE_FAIL, "NODE_FAIL: the node failed under the job", code)
    if JobState.CANCELLED in states or JobState.DEADLINE in states:
        reason = next((r.state for r in rows if r.base_state == JobState.CANCELLED), job_state or JobState.CANCELLED)
        return Failure(CANCELLED, reason if reason.startswith(JobState.CANCELLED) else f"CANCELLED ({reason})", code)
    if code == 0 and not signal and not (states - {JobState.COMPLETED}):
        return Failure(FAILED, exited_zero(status, expected), code)
    detail = f"FAILED with exit code {code if code is not None else '?'}"
    if signal:
        detail += f" (signal {signal})"
    if error:
        detail += f": {error.splitlines()[0][:200]}"
    return Failure(FAILED, detail, code)


def exited_zero(status: Status | None, expected: str = STATUS_FILE) -> str:
    """Why a job that exited 0 is not complete: what its status.json says (None or empty: the job never wrote it)."""
    if status is None or status.state is None:
        return f"exited 0 without writing {expected}"
    if status.state == RUN_COMPLETED:
        return f"exited 0; {STATUS_FILE} says completed but {SUMMARY_FILE} is missing"
    step = f" at step {status.step}" if status.step is not None else ""
    reason = f": {status.reason[:200]}" if status.reason else ""
    return f"exited 0 with {STATUS_FILE} saying {status.state}{step}{reason}"


def requeue_verdict(earlier_state: str | None, log_text: str = "", start: int = 0) -> Failure:
    """The verdict on start `start` of a job Slurm started again under the same id: never the run's failure, so retries
    spend nothing; it says what the run lived through. A lost node is node_fail, the trainer's own requeue on the
    time-limit warning a timeout, anything else a preemption. earlier_state: how accounting says it ended."""
    state = base_state(earlier_state)
    sections = log_text.split(JOB_START)[1:]
    text = sections[start] if start < len(sections) else ""
    if state in (JobState.NODE_FAIL, JobState.BOOT_FAIL) or NODE_FAILURE.search(text):
        return Failure(NODE_FAIL, f"NODE_FAIL: the node failed under the job; {REQUEUED_NOTE}")
    if SELF_REQUEUE in text:
        return Failure(TIMEOUT, f"TIMEOUT: saved on the time-limit warning and requeued itself; {REQUEUED_NOTE}")
    how = "PREEMPTED" if state == JobState.PREEMPTED or PREEMPTION.search(text) else "requeued"
    return Failure(PREEMPTED, f"PREEMPTED ({how} by Slurm); {REQUEUED_NOTE}")


def _first_line(pattern: re.Pattern, text: str) -> str:
    return next((line.strip()[:200] for line in text.splitlines() if pattern.search(line)), "")
