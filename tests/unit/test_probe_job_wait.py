"""The probe job (estimate/probe_slurm.py) waits through the executor's poll until the job has ended, by the
one set of active Slurm states: a job held for requeue or staging out its files has not ended yet. The
scheduler here is a scripted stand-in: each poll answers the next state of a list written by hand."""

from __future__ import annotations

import pytest

from tunelab.errors import TunelabError
from tunelab.estimate.probe_slurm import _wait
from tunelab.execute.executor import UNSEEN, JobInfo


class ScriptedScheduler:
    """poll() answers one state after another (None: the scheduler did not answer; '-': it answered
    without this job)."""

    def __init__(self, states: list[str | None]) -> None:
        self.states = list(states)
        self.polls = 0

    def poll(self, ids: list[str]) -> dict[str, JobInfo] | None:
        state = self.states[min(self.polls, len(self.states) - 1)]
        self.polls += 1
        if state is None:
            return None
        return {} if state == "-" else {i: JobInfo(state) for i in ids}


# Slurm states of a job that has not ended (squeue --states=all lists them); the old probe set lacked these
NOT_ENDED_YET = ["REQUEUE_HOLD", "REQUEUE_FED", "STAGE_OUT", "SIGNALING", "RESV_DEL_HOLD", "STOPPED"]


@pytest.mark.parametrize("state", NOT_ENDED_YET)
def test_a_job_in_a_late_active_state_is_waited_for(state):
    scheduler = ScriptedScheduler(["PENDING", state, state, "COMPLETED"])
    _wait(scheduler, "42", timeout_s=5, poll_s=0)
    assert scheduler.polls == 4  # returned at COMPLETED, not at the first poll showing `state`


@pytest.mark.parametrize("end", ["COMPLETED", "FAILED", "CANCELLED by 1000", "TIMEOUT", "OUT_OF_MEMORY", UNSEEN])
def test_an_ended_job_ends_the_wait_at_once(end):
    scheduler = ScriptedScheduler(["RUNNING", end])
    _wait(scheduler, "42", timeout_s=5, poll_s=0)
    assert scheduler.polls == 2


def test_no_answer_or_no_word_of_the_job_concludes_nothing():
    scheduler = ScriptedScheduler([None, "-", None, "RUNNING", "COMPLETED"])
    _wait(scheduler, "42", timeout_s=5, poll_s=0)
    assert scheduler.polls == 5


def test_a_job_that_never_ends_times_out():
    with pytest.raises(TunelabError, match="still queued or running"):
        _wait(ScriptedScheduler(["REQUEUE_HOLD"]), "42", timeout_s=0.05, poll_s=0.01)
