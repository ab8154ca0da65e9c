"""The local executor through the one executor interface: a local run is a job in the ledger, so
`tunelab status` and `tunelab cancel` treat it as they treat a Slurm job; cancelling makes the trainer
save where it is (SIGTERM), recorded once and not retried."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from waiting import Feed, wait_for

from tunelab.execute.attempts import all_attempts
from tunelab.execute.failures import FailureKind
from tunelab.execute.status import cancel, status_rows
from tunelab.fsutil import read_json, read_jsonl
from tunelab.ledger import store as ledger
from tunelab.scaffold.write import scaffold
from tunelab.train.loop_hooks import DEBUG_SEEN_ENV

pytestmark = pytest.mark.slow


def test_local_run_is_a_job_that_status_and_cancel_handle_like_slurm(write_spec, tmp_path):
    spec = write_spec(factors={"lora_rank": [4]}, controls=False,
                      training={"epochs": 1, "logging_steps": 1, "checkpoint_every": 10})
    exp = spec.parent
    cfg = scaffold(spec).runs[0]
    # the trainer held within a page of records of the last one the test read (waiting.Feed): cancelled inside the
    # 40-step epoch, whatever the machine's speed
    seen, log = tmp_path / "seen", tmp_path / "coordinator.log"
    seen.mkdir()
    feed = Feed(seen / "seen.rank0.jsonl")
    with open(log, "w") as out:
        coordinator = subprocess.Popen([sys.executable, "-m", "tunelab", "run", str(exp)], stdout=out,
                                       stderr=subprocess.STDOUT, env=dict(os.environ, **{DEBUG_SEEN_ENV: str(seen)}))
    try:
        assert wait_for(lambda: feed.drain() >= 12 or coordinator.poll() is not None, 180), "never reached step 12"
        assert coordinator.poll() is None, log.read_text()
        # from another process than the coordinator, as `tunelab status` runs (the job on record by now, or soon)
        assert wait_for(lambda: [r.state for r in status_rows(exp)] == ["running"], 60), status_rows(exp)
        (row,) = status_rows(exp)
        assert (row.executor, row.state) == ("local", "running") and row.job_id.isdigit(), row
        feed.drain()  # the last read before the cancel: the trainer cannot finish the epoch until the next
        assert feed.held_before(40), f"a page ({feed.size} bytes) holds the records up to step 40"
        assert cancel(exp) == [row.job_id]
        assert feed.drain_until_exit(coordinator, 120), "the sweep did not end after the cancel"
    finally:
        if coordinator.poll() is None:
            coordinator.kill()
        feed.close()
    assert coordinator.wait() == 1, log.read_text()
    (row,) = status_rows(exp)
    assert row.state == "cancelled" and row.shown == "CANCELLED" and row.failure == "cancelled"
    status = read_json(cfg.run_dir / "status.json")
    stopped = status["step"]
    assert status["state"] == "interrupted" and f"saved on SIGTERM: stopped at step {stopped}" in status["error"]
    assert (cfg.run_dir / "trainer_state" / f"checkpoint-{stopped}" / "tunelab_counters.json").is_file()
    attempts = ledger.query(exp, "SELECT state FROM attempts")
    assert attempts == [{"state": "cancelled"}]  # recorded once, not retried
    (attempt,) = all_attempts(exp)  # the typed view the report reads: the verdict as its member
    assert attempt.state is FailureKind.CANCELLED and (attempt.run, attempt.executor) == (cfg.name, "local")
    steps = [r["step"] for r in read_jsonl(cfg.run_dir / "metrics.jsonl") if r.get("loss") is not None]
    assert steps == list(range(1, stopped + 1))  # (resuming from there: test_slurm_executor's cancel test)
    jobs = ledger.query(exp, "SELECT executor, failure FROM jobs ORDER BY id")
    assert jobs == [{"executor": "local", "failure": "cancelled"}]
