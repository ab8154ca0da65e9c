"""The local executor through the one executor interface: a local run is a job in the ledger, so
`tunelab status` and `tunelab cancel` treat it as they treat a Slurm job; cancelling makes the trainer
save where it is (SIGTERM), recorded once and not retried."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tunelab.ledger import store as ledger
from tunelab.execute.failures import FailureKind
from tunelab.execute.attempts import all_attempts
from tunelab.execute.status import cancel, status_rows
from tunelab.fsutil import read_json, read_jsonl
from tunelab.scaffold.write import scaffold

pytestmark = pytest.mark.slow


def test_local_run_is_a_job_that_status_and_cancel_handle_like_slurm(write_spec):
    spec = write_spec(factors={"lora_rank": [4]}, controls=False,
                      training={"epochs": 1, "logging_steps": 1, "checkpoint_every": 10})
    exp = spec.parent
    cfg = scaffold(spec).runs[0]
    # steps of at least 0.2 s (tunelab.faults.pace_step): the 40-step epoch lasts 8 s or more, cancelled inside it
    coordinator = subprocess.Popen([sys.executable, "-m", "tunelab", "run", str(exp)], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True,
                                   env=dict(os.environ, TUNELAB_FAULT_STEP_S="0.2"))
    end = time.monotonic() + 180
    while (read_json(cfg.run_dir / "status.json") or {}).get("step", 0) < 12 and time.monotonic() < end:
        time.sleep(0.1)
    (row,) = status_rows(exp)  # from another process than the coordinator, as `tunelab status` runs
    assert (row.executor, row.state) == ("local", "running") and row.job_id.isdigit(), row
    assert cancel(exp) == [row.job_id]
    out = coordinator.communicate(timeout=120)[0]
    assert coordinator.returncode == 1, out
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
