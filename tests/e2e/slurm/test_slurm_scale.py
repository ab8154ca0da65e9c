"""Slurm at scale on the real cluster, in one sweep (the slow part is each job's start): more jobs than
max_queued (two runs, a training and an evaluation job each, two queued at most) finish while sacct fails,
and a training job warned before its time limit (SIGUSR1) and then
requeued as preemption does (SIGTERM) saves where it is each time, comes back under the same job id
and resumes mid-epoch, every step trained and logged once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from waiting import wait_for

from tunelab.fsutil import read_json, read_jsonl
from tunelab.ledger import store as ledger
from tunelab.scaffold.write import scaffold

# a long fault run (about a minute): `make test-faults`, outside `make test` and its 15-minute budget
pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.fault_run, pytest.mark.usefixtures("slurm_cluster")]
SLURM = {"executor": "slurm", "gpus_per_run": 0,
         "slurm": {"time_limit": "15", "submit_delay_s": 0.1, "poll_interval_s": 0.5}}



def _sacct_ends(ids: list[str]) -> dict[str, datetime]:
    """{job: when it ended (UTC)} from the real sacct (the coordinator's PATH held a broken one)."""
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-S", "2000-01-01", "-j", ",".join(ids), "--format=JobID,End"],
                         capture_output=True, text=True, check=True, env=dict(os.environ, TZ="UTC")).stdout
    rows = [line.split("|") for line in out.splitlines() if line.strip()]
    return {r[0]: datetime.fromisoformat(r[1]).replace(tzinfo=UTC) for r in rows if r[1] != "Unknown"}


def _job_state(job: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.strip()


def _release(job: str) -> None:
    """A requeued job waits out Slurm's BeginTime (cred_expire, 2 min); start it now (an admin's command).
    Not within the second of the requeue: its old credential is revoked with a one-second resolution, and a
    start in that second fails ("Killing non-startable batch job: Job credential revoked")."""
    assert wait_for(lambda: _job_state(job) == "PENDING", 60, every=0.2), _job_state(job)
    time.sleep(2.0)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)


def _status(run_dir: Path) -> dict:
    return read_json(run_dir / "status.json") or {}


def test_sweep_beyond_max_queued_survives_warning_preemption_and_failing_sacct(write_spec, tmp_path):
    broken = tmp_path / "bin"
    broken.mkdir()
    (broken / "sacct").write_text("#!/bin/sh\necho 'sacct: error: Problem talking to the database: "
                                  "Connection refused' >&2\nexit 1\n")
    (broken / "sacct").chmod(0o755)
    spec = write_spec(factors={"lora_rank": [4, 8]}, controls=False, eval={"max_tokens": 8, "limit": 2},
                      training={"logging_steps": 1, "checkpoint_every": 5},
                      resources={**SLURM, "slurm": {**SLURM["slurm"], "max_queued": 2, "signal_before_limit_s": 60}})
    exp = spec.parent
    runs = scaffold(spec).runs
    cfg = runs[0]  # submitted first; the throttle holds the others back while it is warned and requeued
    assert "#SBATCH --signal=B:USR1@60" in (cfg.run_dir / "job.sbatch").read_text()
    env = dict(os.environ, PATH=f"{broken}:{os.environ['PATH']}")  # sacct fails for the coordinator
    coordinator = subprocess.Popen([sys.executable, "-m", "tunelab", "run", str(exp), "--wait"], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_for(lambda: ledger.query(exp, "SELECT job_id FROM jobs WHERE kind = 'train'"), 120, every=0.2)
        job = ledger.query(exp, "SELECT job_id FROM jobs WHERE kind = 'train'")[0]["job_id"]
        # 1. the time-limit warning as Slurm delivers it (to the batch shell, which is the trainer)
        assert wait_for(lambda: (_status(cfg.run_dir).get("step") or 0) >= 8, 180)
        subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)
        _release(job)
        assert wait_for(lambda: _status(cfg.run_dir).get("restarts") == 1 and
                         _status(cfg.run_dir)["state"] == "running", 120)
        first = int(_status(cfg.run_dir)["resumed_from"].split("-")[1])
        # 2. preemption-style requeue: Slurm sends SIGTERM, the trainer saves at its next step
        assert wait_for(lambda: (_status(cfg.run_dir).get("step") or 0) >= first + 3, 120)
        subprocess.run(["scontrol", "requeue", job], check=True)
        _release(job)
        out = coordinator.communicate(timeout=600)[0]
    finally:
        coordinator.kill()
    assert coordinator.returncode == 0, out
    jobs = ledger.query(exp, "SELECT * FROM jobs ORDER BY id")
    assert len(jobs) == 4 and all(j["failure"] == "completed" for j in jobs), jobs  # 2 runs: train + eval each
    assert all(j["exit_code"] is None for j in jobs)  # judged from squeue and the run's files, without sacct
    # the warned and the preempted start each saved where they were; every step trained and logged once
    status = _status(cfg.run_dir)
    second = int(status["resumed_from"].split("-")[1])
    assert status["restarts"] == 2 and 8 <= first and first + 3 <= second < 40  # mid-epoch both times
    steps = [r["step"] for r in read_jsonl(cfg.run_dir / "metrics.jsonl") if r.get("loss") is not None]
    assert steps == list(range(1, 41))
    log = (cfg.run_dir / f"slurm-train-{job}.out").read_text()
    assert log.count("[tunelab job]") == 3  # one log, appended by each start of the same job
    assert f"saved before the time limit: stopped at step {first}" in log and f"requeuing job {job}" in log
    assert f"saved on SIGTERM: stopped at step {second}" in log
    assert [j["depends_on"] for j in jobs if j["kind"] == "eval"][0] == job  # afterok held over the requeues
    assert sorted(p.name for p in (cfg.run_dir / "checkpoints").iterdir()) == ["epoch_0"]
    # the throttle held: whenever a job was submitted, at most max_queued of ours were queued or running
    ends = _sacct_ends([j["job_id"] for j in jobs])
    spans = {j["job_id"]: (datetime.fromisoformat(j["submitted_at"]), ends[j["job_id"]]) for j in jobs}
    live = [len([k for k, (s, e) in spans.items() if s <= t < e]) for t, _ in spans.values()]
    assert max(live) == 2, spans

