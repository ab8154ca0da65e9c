"""The job states every executor reports in (Slurm's names): one vocabulary, and the one rule of which states have not
ended yet. `JobState.of` reads a scheduler's text ('CANCELLED by 1000') as its base state; a state nobody knows has
ended."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """Slurm's job state codes plus SUBMITTED (not yet polled) and UNSEEN (forgotten: ended, its files say how)."""

    SUBMITTED = "SUBMITTED"
    UNSEEN = "UNSEEN"
    BOOT_FAIL = "BOOT_FAIL"
    CANCELLED = "CANCELLED"
    COMPLETED = "COMPLETED"
    CONFIGURING = "CONFIGURING"
    COMPLETING = "COMPLETING"
    DEADLINE = "DEADLINE"
    FAILED = "FAILED"
    NODE_FAIL = "NODE_FAIL"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    PENDING = "PENDING"
    PREEMPTED = "PREEMPTED"
    RUNNING = "RUNNING"
    RESV_DEL_HOLD = "RESV_DEL_HOLD"
    REQUEUE_FED = "REQUEUE_FED"
    REQUEUE_HOLD = "REQUEUE_HOLD"
    REQUEUED = "REQUEUED"
    RESIZING = "RESIZING"
    REVOKED = "REVOKED"
    SIGNALING = "SIGNALING"
    SPECIAL_EXIT = "SPECIAL_EXIT"
    STAGE_OUT = "STAGE_OUT"
    STOPPED = "STOPPED"
    SUSPENDED = "SUSPENDED"
    TIMEOUT = "TIMEOUT"

    @classmethod
    def of(cls, state: str | None) -> JobState | None:
        """The base state of a scheduler's text ('CANCELLED by 0' -> CANCELLED); None for none or an unknown word."""
        word = base_state(state)
        return cls(word) if word in cls._value2member_map_ else None

    @property
    def active(self) -> bool:
        """Has not ended yet (queued, running, or held to run again)."""
        return self in ACTIVE_STATES

    @property
    def queued(self) -> bool:
        """Active and not started yet (or waiting to start again): a run whose job is here shows as pending."""
        return self in QUEUED_STATES


# The states of a job that has not ended yet: the one set every executor, `status` and the probe use.
ACTIVE_STATES = frozenset({
    JobState.SUBMITTED, JobState.PENDING, JobState.CONFIGURING, JobState.RUNNING, JobState.COMPLETING,
    JobState.SUSPENDED, JobState.REQUEUED, JobState.REQUEUE_HOLD, JobState.REQUEUE_FED, JobState.RESIZING,
    JobState.SIGNALING, JobState.STAGE_OUT, JobState.RESV_DEL_HOLD, JobState.STOPPED})
# Of those, the ones waiting for a start (first or again), not holding an allocation that runs the job.
QUEUED_STATES = frozenset({JobState.SUBMITTED, JobState.PENDING, JobState.REQUEUED, JobState.REQUEUE_HOLD,
                           JobState.REQUEUE_FED, JobState.RESV_DEL_HOLD})

UNSEEN = JobState.UNSEEN


def base_state(state: str | None) -> str:
    """'CANCELLED by 0' -> 'CANCELLED'; 'COMPLETED+' -> 'COMPLETED'; None -> ''."""
    return (state or "").split(" ")[0].rstrip("+").upper()


def is_active_state(state: str | None) -> bool:
    """A scheduler's state text names a job that has not ended (an unknown word has ended)."""
    known = JobState.of(state)
    return known is not None and known.active
