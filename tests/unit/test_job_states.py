"""Every job reaches a verdict: squeue + sacct views merged (execute/slurm_cli.merge), the wait for a
lagging sacct bounded (execute/refresh.should_judge), jobs the scheduler forgot judged from their files;
the local executor's jobs (real processes) through the same interface."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tunelab.execute.executor import UNSEEN, JobInfo
from tunelab.execute.failures import FAILED, TIMEOUT, SacctRow, classify
from tunelab.execute.jobs import JobRow, all_jobs, is_active
from tunelab.execute.local_jobs import LocalExecutor
from tunelab.execute.refresh import SETTLE_GRACE_S, refresh, should_judge
from tunelab.execute.slurm_cli import merge
from tunelab.ledger import store as ledger
from tunelab.rundir import Status
from tunelab.train.interrupts import SAVED_BEFORE_LIMIT


def _rows(state: str, code: str = "0:0") -> list[SacctRow]:
    return [SacctRow("7", state, code, "00:00:09", {"node": "n1"}), SacctRow("7.batch", state, code, "00:00:09")]


def test_squeue_is_the_authority_on_live_jobs_and_sacct_settles_ended_ones():
    running = merge(("RUNNING", "None"), True, _rows("RUNNING"), True)
    assert not running.ended and running.settled
    # squeue says it ended, sacct has not caught up: ended but not settled (wait a little for exit codes)
    lag = merge(("COMPLETED", "None"), True, [], True)
    assert lag.ended and not lag.settled and lag.state == "COMPLETED"
    done = merge(("FAILED", "NonZeroExitCode"), True, _rows("FAILED", "1:0"), True)
    assert done.ended and done.settled and done.exit_code == "1:0" and done.node == "n1"
    # sacct missing or failing: nothing to wait for
    assert merge(("COMPLETED", "None"), True, [], False).settled


def test_a_job_squeue_forgot_has_ended_whatever_sacct_says():
    # aged out of squeue (MinJobAge), sacct knows how it ended
    gone = merge(None, True, _rows("TIMEOUT"), True)
    assert gone.ended and gone.state == "TIMEOUT"
    # aged out, sacct failing, missing, or stale (still says RUNNING): ended, judged from files
    for rows, ok in (([], False), ([], True), (_rows("RUNNING"), True)):
        info = merge(None, True, rows, ok)
        assert info.ended and info.state == UNSEEN and info.settled, (rows, ok)
    # squeue itself failed: absence means nothing; sacct alone when it knows the job
    assert merge(None, False, [], True) is None and merge(None, False, [], False) is None
    assert merge(None, False, _rows("COMPLETED"), True).state == "COMPLETED"


def test_waiting_for_a_lagging_sacct_is_bounded():
    now = datetime.now(UTC)
    lag = JobInfo("COMPLETED", settled=False)
    def job(state: str, updated_at: datetime) -> JobRow:
        return JobRow(1, "r", "train", "7", 1, "slurm", updated_at.isoformat(), state, updated_at.isoformat())

    fresh = job("COMPLETED", now)
    old = job("COMPLETED", now - timedelta(seconds=SETTLE_GRACE_S + 1))
    changed = job("RUNNING", now - timedelta(hours=1))
    assert not should_judge(fresh, lag, now) and not should_judge(changed, lag, now)
    assert should_judge(old, lag, now)
    assert should_judge(fresh, JobInfo("COMPLETED"), now) and not should_judge(old, JobInfo("RUNNING"), now)


def test_unseen_job_is_judged_from_its_run_files_and_a_warning_stop_is_a_timeout():
    assert classify(UNSEEN, None, [], "", Status(state="completed"), True).detail == "completed"
    assert classify(UNSEEN, None, [], "slurmstepd: error: *** JOB 9 ON n CANCELLED AT 2026-01-01T00:00:00 "
                    "DUE TO TIME LIMIT ***").kind == TIMEOUT
    assert classify(UNSEEN).kind == FAILED
    stopped = classify("FAILED", "1:0", [], "", Status(error=f"TrainingStopped: {SAVED_BEFORE_LIMIT}: stopped at "
                                                          "step 13 after checkpoint-13"))
    assert stopped.kind == TIMEOUT and stopped.retryable


def _script(tmp_path: Path, body: str) -> Path:
    d = tmp_path / "runs" / "r1"
    d.mkdir(parents=True, exist_ok=True)
    (d / "job.sh").write_text(f"#!/usr/bin/env bash\n{body}\n")
    return d / "job.sh"


def _wait_ended(ex, job: str, timeout: float = 60) -> JobInfo:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        info = ex.poll([job])[job]
        if info.ended:
            return info
        time.sleep(0.05)
    pytest.fail(f"job {job} did not end")


def _wait_exec(pid: str, script: Path, timeout: float = 60) -> None:
    """Until the child has exec'd `bash script` (before, its command line is still Python's, forked); the timeout
    only keeps a broken case from hanging."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if str(script).encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                return
        except OSError:  # gone (it failed): the guard below names it
            pass
        time.sleep(0.02)
    pytest.fail(f"job {pid} never ran bash {script}")


def test_local_executor_submit_poll_cancel_log(tmp_path):
    ex = LocalExecutor()
    job = ex.submit(_script(tmp_path, "echo hello; exit 3"))
    info = _wait_ended(ex, job)
    assert (info.state, info.exit_code) == ("FAILED", "3:0")
    assert "hello" in ex.log(tmp_path / "runs" / "r1", "train", job).read_text()
    job = ex.submit(script := _script(tmp_path, "sleep 30"))
    assert ex.poll([job])[job].state == "RUNNING"
    _wait_exec(job, script)
    assert LocalExecutor().poll([job])[job].state == "RUNNING"  # another coordinator sees it alive
    LocalExecutor().cancel([job])  # ... and can stop it
    info = _wait_ended(ex, job)
    assert info.state == "CANCELLED" and info.exit_code == "0:15"
    assert LocalExecutor().poll([job])[job].state == UNSEEN  # gone: nobody but its starter saw how it ended


def test_refresh_judges_a_job_nobody_saw_end_so_the_throttle_moves_on(write_spec, tmp_path):
    """The old hang: a job recorded as RUNNING whose process (or Slurm record) is gone counted as active
    forever. After a refresh it has a verdict from its files and no longer counts."""
    from tunelab.scaffold.write import scaffold

    cfg = scaffold(write_spec(factors={"lora_rank": [4]}, controls=False)).runs[0]
    exp = cfg.run_dir.parents[1]
    proc = os.popen("bash -c 'echo $$; exit 0'")  # a real pid that has certainly ended by now
    pid = proc.read().strip()
    proc.close()
    ledger.record_job(exp, run=cfg.name, kind="train", job_id=pid, attempt=1, executor="local",
                      submitted_at="2026-01-01T00:00:00+00:00", state="RUNNING", reason="test")
    assert [is_active(j) for j in all_jobs(exp)] == [True]
    changed = refresh(exp, {cfg.name: cfg})
    (job,) = all_jobs(exp)
    assert changed and not is_active(job) and job.state == UNSEEN
    assert job.failure == FAILED and "local no longer knows job" in job.detail


def test_a_job_that_requeued_itself_stays_active_while_slurm_brings_it_back(write_spec):
    """The race CI hit: a job that requeued itself on the time-limit warning looked ended for a moment
    (its batch step's end, before it was pending again), was judged TIMEOUT and retried, and the retry
    raced the requeued job. While status.json says this very job requeued itself (and not long ago) it
    counts as active and gets no verdict; a requeue that never came back is judged after the grace."""
    from tunelab import rundir as st
    from tunelab.execute.refresh import REQUEUE_GRACE_S
    from tunelab.scaffold.write import scaffold

    cfg = scaffold(write_spec(factors={"lora_rank": [4]}, controls=False)).runs[0]
    exp = cfg.run_dir.parents[1]
    proc = os.popen("bash -c 'echo $$; exit 0'")  # a real job that has ended, as the executor sees it
    pid = proc.read().strip()
    proc.close()
    ledger.record_job(exp, run=cfg.name, kind="train", job_id=pid, attempt=1, executor="local",
                      submitted_at="2026-01-01T00:00:00+00:00", state="RUNNING", reason="test")
    error = f"TrainingStopped: {SAVED_BEFORE_LIMIT}: stopped at step 9 after checkpoint-9"
    st.write_status(cfg.run_dir, state=st.INTERRUPTED, error=error, requeued_job=pid, requeued_at=st.now_iso())
    refresh(exp, {cfg.name: cfg})
    (job,) = all_jobs(exp)
    assert job.state == "REQUEUED" and is_active(job) and job.failure is None
    # another job of the same run is not covered by this job's requeue
    st.write_status(cfg.run_dir, requeued_job=str(int(pid) + 1))
    refresh(exp, {cfg.name: cfg})
    (job,) = all_jobs(exp)
    assert job.state == UNSEEN and job.failure == TIMEOUT
    # a requeue older than the grace that still looks ended has ended
    ledger.update_job(exp, job.id, state="RUNNING", failure=None)
    old = (datetime.now(UTC) - timedelta(seconds=REQUEUE_GRACE_S + 5)).isoformat(timespec="seconds")
    st.write_status(cfg.run_dir, requeued_job=pid, requeued_at=old)
    refresh(exp, {cfg.name: cfg})
    (job,) = all_jobs(exp)
    assert job.failure == TIMEOUT and not is_active(job)


def test_a_self_requeued_slurm_job_waits_for_slurm_to_end_it(tmp_path):
    """The batch script must not end on its own after `scontrol requeue` (an early non-zero exit can be
    recorded as FAILED and cancel the evaluation's afterok): it waits for Slurm's SIGTERM, and only for a
    job that requeued itself."""
    import signal
    import subprocess
    import sys

    from tunelab import rundir as st

    st.write_status(tmp_path, state=st.INTERRUPTED, requeued_job="41", requeued_at=st.now_iso())
    code = ("import sys; from pathlib import Path; from tunelab.train.interrupts import await_requeue_kill; "
            "await_requeue_kill(Path(sys.argv[1]), print, wait_s=float(sys.argv[2])); print('returned')")
    env = dict(os.environ, SLURM_JOB_ID="41")
    waiting = subprocess.Popen([sys.executable, "-c", code, str(tmp_path), "60"], env=env,
                               stdout=subprocess.PIPE, text=True)
    first = waiting.stdout.readline()
    assert "waiting for Slurm to end job 41" in first
    time.sleep(0.5)
    assert waiting.poll() is None  # still waiting: the job does not end by itself
    waiting.send_signal(signal.SIGTERM)  # Slurm ending it for the requeue
    assert waiting.wait(10) == -signal.SIGTERM
    other = subprocess.run([sys.executable, "-c", code, str(tmp_path), "60"], capture_output=True, text=True,
                           env=dict(os.environ, SLURM_JOB_ID="42"), timeout=60)
    assert other.stdout.strip() == "returned"  # not the job that requeued itself: no wait


def _after_warning_stop(tmp_path, scontrol: str):
    """A trainer stopped by Slurm's time-limit warning at step 9 of a fresh start, run in its own process
    as job 41 with `scontrol` on PATH doing what the given script does. Returns (process, status.json)."""
    import subprocess
    import sys

    from tunelab import rundir as st

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/sh\n" + scontrol)
    (bin_dir / "scontrol").chmod(0o755)
    run_dir = tmp_path / "run"
    st.write_status(run_dir, state=st.INTERRUPTED)
    code = ("import signal, sys; from tunelab.rundir.status import StatusWriter; "
            "from tunelab.train.interrupts import TrainingStopped, after_stop; "
            "after_stop(TrainingStopped(signal.SIGUSR1, 9), None, StatusWriter(sys.argv[1]), "
            "lambda m: print(m, flush=True)); print('returned', flush=True)")
    env = dict(os.environ, SLURM_JOB_ID="41", PATH=f"{bin_dir}:{os.environ['PATH']}")
    proc = subprocess.run([sys.executable, "-c", code, str(run_dir)], env=env, capture_output=True, text=True,
                          check=False, timeout=60)
    return proc, st.read_status(run_dir)


def test_a_requeue_is_on_record_before_slurm_ends_the_job(tmp_path):
    """The race CI hit: Slurm's SIGTERM for the requeue can end the trainer before `scontrol requeue`
    returns. Whatever the job says of its requeue (status.json's mark that keeps the coordinator from
    judging it, the log line) is written before the call, so the kill loses none of it."""
    import signal

    proc, status = _after_warning_stop(tmp_path, "kill -TERM $PPID\nsleep 1\nexit 0\n")  # Slurm's kill, first
    assert proc.returncode == -signal.SIGTERM, proc.stdout + proc.stderr
    assert "saved before the time limit: stopped at step 9" in proc.stdout
    assert "requeuing job 41: it resumes from the checkpoint just saved" in proc.stdout
    assert status.requeued_job == "41" and status.requeued_at is not None


def test_a_refused_requeue_takes_its_mark_back(tmp_path):
    """Slurm refusing the requeue: the job ends as it is (the coordinator judges it), its log says why."""
    proc, status = _after_warning_stop(tmp_path, "echo 'Requested operation is presently disabled' >&2\nexit 1\n")
    assert proc.returncode == 0 and "returned" in proc.stdout, proc.stderr
    assert "could not requeue job 41: Requested operation is presently disabled" in proc.stdout
    assert status.requeued_job is None and status.requeued_at is None
