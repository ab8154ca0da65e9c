"""The judging behind the Slurm faults (tests/e2e/slurm/test_slurm_faults.py runs them on the real daemons): a start
Slurm requeued is an attempt of its own with the verdict of what requeued it, recorded once; a preemption's retry
spends no budget; a verdict given without accounting is judged again, sharpened only, when accounting answers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tunelab.execute import retry
from tunelab.execute.attempts import all_attempts
from tunelab.execute.executor import JobInfo, JobKind
from tunelab.execute.failures import FAILED, NODE_FAIL, OOM, PREEMPTED, TIMEOUT, Failure, SacctRow, requeue_verdict
from tunelab.execute.jobs import JobRow, all_jobs
from tunelab.execute.refresh import RECHECK_S, judge_again, judged_without_accounting, record_restarts
from tunelab.execute.slurm_cli import unsure_token
from tunelab.ledger import store as ledger
from tunelab.rundir import now_iso
from tunelab.scaffold.write import scaffold

START = "[tunelab job] 2026-01-01T00:00:00+00:00 train job 7 on n1, attempt 1\n"


class LogOnly:
    """The one thing these judgments ask of an executor: a job's log, here a file the test wrote."""

    name = "slurm"

    def __init__(self, text: str = ""):
        self.text = text

    def output(self, run_dir: Path, kind: JobKind, job_id: str) -> str:
        return self.text


def test_a_requeued_start_is_judged_by_what_requeued_it():
    # accounting's record of the start wins for a lost node (its processes died without a line)
    assert requeue_verdict("NODE_FAIL", START + "step 5\n").kind == NODE_FAIL
    # the trainer's own requeue on the time-limit warning, read from that start's section of the appended log
    log = (START + "saved before the time limit: stopped at step 8\nrequeuing job 7: it resumes\n"
           + START + "slurmstepd: error: *** JOB 7 ON n1 CANCELLED AT 2026-01-01T00:01:00 DUE TO JOB REQUEUE ***\n")
    assert requeue_verdict("REQUEUED", log, 0).kind == TIMEOUT
    second = requeue_verdict("REQUEUED", log, 1)
    assert second.kind == PREEMPTED and "no retry spent" in second.detail
    assert requeue_verdict("PREEMPTED", "", 0).kind == PREEMPTED
    # nothing known (accounting down, no log): Slurm requeued it, a preemption; never a failure
    assert requeue_verdict(None, "", 3).kind == PREEMPTED


def _job(book: Path, state: str = "RUNNING") -> JobRow:
    ledger.record_job(book, run="r", kind="train", job_id="7", attempt=1, executor="slurm",
                      submitted_at=now_iso(), state=state)
    return all_jobs(book)[-1]


def test_each_requeued_start_is_recorded_once_and_lagging_accounting_is_awaited(tmp_path):
    job = _job(tmp_path)
    rows = (SacctRow("7", "PENDING"),)
    assert record_restarts(tmp_path, job, JobInfo("PENDING"), None, LogOnly()) == []  # never restarted
    # accounting answers but has not recorded the start's end yet: wait, while the job is active
    assert record_restarts(tmp_path, job, JobInfo("PENDING", rows=rows, restarts=1), None, LogOnly()) == []
    assert all_attempts(tmp_path) == []
    lost = JobInfo("PENDING", rows=rows, restarts=1, earlier=("NODE_FAIL",))
    assert [f.kind for f in record_restarts(tmp_path, job, lost, None, LogOnly())] == [NODE_FAIL]
    assert record_restarts(tmp_path, job, lost, None, LogOnly()) == []  # polled again: recorded once
    # accounting down (no rows): the log tells, and the run's attempt stays (no retry happened)
    again = JobInfo("RUNNING", restarts=2)
    log = START + START + "*** JOB 7 ON n1 CANCELLED AT 2026-01-01T00:01:00 DUE TO PREEMPTION ***\n" + START
    assert [f.kind for f in record_restarts(tmp_path, job, again, None, LogOnly(log))] == [PREEMPTED]
    assert [(a.attempt, a.job_id, a.state) for a in all_attempts(tmp_path)] == [(1, "7", NODE_FAIL),
                                                                                 (1, "7", PREEMPTED)]
    # an evaluation job's requeue is no attempt of the run
    ledger.record_job(tmp_path, run="r", kind="eval", job_id="8", attempt=1, executor="slurm",
                      submitted_at=now_iso(), state="PENDING")
    assert record_restarts(tmp_path, all_jobs(tmp_path)[-1], lost, None, LogOnly()) == []


@pytest.fixture
def cfg(write_spec, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "empty-history.db"))
    spec = write_spec(factors={"lora_rank": [4]}, controls=False,
                      resources={"executor": "slurm", "gpus_per_run": 0, "max_retries": 1})
    return scaffold(spec).runs[0]


def test_a_preemption_spends_no_retry(cfg):
    spent = cfg.model_copy(update={"attempt": 2})  # the one retry max_retries allows is spent
    assert not retry.decide(spent, Failure(NODE_FAIL, "")).retry
    assert retry.decide(spent, Failure(PREEMPTED, "PREEMPTED")).retry  # preempted again and again: resumed
    # attempt 4 after two preemptions: one retry spent, one left for the run's own failures
    late = cfg.model_copy(update={"attempt": 3})
    assert retry.decide(late, Failure(NODE_FAIL, ""), preempted=2).retry
    assert not retry.decide(late, Failure(NODE_FAIL, ""), preempted=1).retry
    assert "gave up after 1 retries" in retry.decide(late, Failure(OOM, ""), preempted=1).reason


def test_a_verdict_given_without_accounting_is_sharpened_when_it_answers(tmp_path):
    job = _job(tmp_path, "FAILED")
    ledger.update_job(tmp_path, job.id, failure=FAILED, detail="FAILED with exit code ?", handled=1)
    ledger.record_attempt(tmp_path, run="r", attempt=1, executor="slurm", job_id="7", started_at=None,
                          finished_at=None, exit_code=None, state=FAILED, reason="FAILED with exit code ?")
    job = all_jobs(tmp_path)[0]
    now = datetime.now(UTC)
    assert judged_without_accounting(job, now) and not judged_without_accounting(job, now + timedelta(seconds=RECHECK_S))
    # accounting still says it runs (stale): nothing to learn yet
    stale = JobInfo("FAILED", "0:0", rows=(SacctRow("7", "RUNNING", "0:0"),))
    assert judge_again(tmp_path, job, stale, None, LogOnly()) is None and all_jobs(tmp_path)[0].exit_code is None
    # accounting has the end, squeue still says COMPLETING: the judged row never goes back to an active state
    ending = JobInfo("COMPLETING", "0:0", rows=(SacctRow("7", "CANCELLED", "0:15"),))
    assert judge_again(tmp_path, job, ending, None, LogOnly()) is None and all_jobs(tmp_path)[0].state == "FAILED"
    oom = (SacctRow("7", "FAILED", "0:125", "00:01:00", {"node": "n1"}),
           SacctRow("7.batch", "OUT_OF_MEMORY", "0:125"))
    row = judge_again(tmp_path, job, JobInfo("FAILED", "0:125", "00:01:00", "n1", rows=oom), None, LogOnly())
    assert row is not None and row.failure == OOM and "was failed" in (row.detail or "")
    stored = all_jobs(tmp_path)[0]
    assert (stored.exit_code, stored.node, stored.failure) == ("0:125", "n1", OOM)
    assert [a.state for a in all_attempts(tmp_path)] == [OOM]
    assert not judged_without_accounting(stored)  # judged once more, then left alone


def test_a_files_verdict_stands_and_only_the_record_is_completed(tmp_path):
    job = _job(tmp_path, "COMPLETED")
    ledger.update_job(tmp_path, job.id, failure="completed", detail="completed", handled=1)
    done = (SacctRow("7", "FAILED", "1:0", "00:00:30", {"node": "n2"}),)
    assert judge_again(tmp_path, all_jobs(tmp_path)[0], JobInfo("FAILED", "1:0", "00:00:30", "n2", rows=done),
                       None, LogOnly()) is None
    stored = all_jobs(tmp_path)[0]
    assert (stored.failure, stored.exit_code, stored.elapsed) == ("completed", "1:0", "00:00:30")


def test_an_unanswered_sbatch_token_outlives_its_process_for_that_submission_only(tmp_path):
    script = tmp_path / "job.sbatch"
    assert unsure_token(script, "None|None") is None  # nothing unsure: submit
    unsure_token(script, "None|None", "abc123")  # sbatch's answer was lost
    assert unsure_token(script, "None|None") == "abc123"  # a later process looks the job up first
    assert unsure_token(script, "41|None") is None  # another dependency: another submission
    unsure_token(script, None)  # found or submitted: forgotten
    assert unsure_token(script, "None|None") is None and list(tmp_path.iterdir()) == []
