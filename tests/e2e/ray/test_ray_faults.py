"""What a real Ray cluster does to a sweep (`make test-faults`: long runs, outside `make test`), on a cluster of
these tests' own (tests/raycluster.py FAULTS: a head that runs no job and two one-CPU workers, each in a network
namespace): a worker node lost mid-run — its raylet, its workers and the training they ran, SIGKILLed — and the head
restarted while runs wait in Ray's queue (Ray keeps its jobs in the head: without an external GCS store they go
with it, so tunelab says what was lost, then resubmits).

Every run is the same tiny run (one epoch of 40 steps, a checkpoint every 5, steps paced so it is still training when
the fault comes: tunelab.faults.pace_step, its TUNELAB_FAULT_STEP_S forwarded to the Ray jobs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import raycluster
from waiting import wait_for

from tunelab.fsutil import read_json, read_jsonl
from tunelab.ledger import store as ledger
from tunelab.scaffold.write import scaffold

pytestmark = [pytest.mark.slow, pytest.mark.fault_run]
STEPS = 40  # 320 training examples / micro-batch 8, one epoch
LAYOUT = raycluster.FAULTS
WORKERS = (1, 2)  # the nodes that run jobs (the head has no CPU)


@pytest.fixture(scope="module")
def fault_cluster():
    why = raycluster.why_not()
    if why is not None:
        pytest.skip(why)
    cluster, started = raycluster.start_cluster(LAYOUT)
    print(f"\nRay fault cluster {f'up in {cluster.start_s:.1f} s' if started else 'found running'} at "
          f"{cluster.address}")
    yield cluster
    if started:
        cluster.stop()


def _spec(spec_in, directory: Path, address: str, ranks: list[int]) -> Path:
    path = spec_in(directory, name=directory.name, factors={"lora_rank": ranks}, controls=False,
                   training={"epochs": 1, "logging_steps": 5, "checkpoint_every": 5},
                   eval={"max_tokens": 8, "limit": 4},
                   resources={"executor": "ray", "address": address, "gpus_per_run": 0, "max_retries": 2})
    scaffold(path)
    return path.parent


def _env(pace_s: str) -> dict[str, str]:
    """The paced steps reach the Ray jobs: TUNELAB_* goes with each job."""
    return dict(os.environ, TUNELAB_FAULT_STEP_S=pace_s, HF_HUB_OFFLINE="1", COLUMNS="200")


def _tunelab(exp: Path, *args: str, pace_s: str = "0.3") -> subprocess.CompletedProcess:
    """`tunelab ARGS EXP` as a person runs it, in a process of its own."""
    return subprocess.run([sys.executable, "-m", "tunelab", *args, str(exp)], env=_env(pace_s), capture_output=True,
                          text=True, timeout=420)


def _coordinator(exp: Path) -> tuple[subprocess.Popen, Path]:
    """`tunelab run --wait` in the background, its output in a file."""
    out = exp.parent / "coordinator.out"
    with out.open("w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "tunelab", "run", "--wait", str(exp)], env=_env("0.3"),
                                text=True, stdout=fh, stderr=subprocess.STDOUT)
    return proc, out


def _jobs(exp: Path, run: str, kind: str = "train") -> list[dict]:
    return [j for j in ledger.query(exp, "SELECT * FROM jobs ORDER BY id") if j["run"] == run and j["kind"] == kind]


def _attempts(exp: Path, run: str) -> list[tuple]:
    return [(a["attempt"], a["node"], a["state"]) for a in
            ledger.query(exp, "SELECT * FROM attempts WHERE run = ? ORDER BY id", (run,))]


def _status(exp: Path, run: str) -> dict:
    return read_json(exp / "runs" / run / "status.json", default={}) or {}


def _trained_once(exp: Path, run: str) -> None:
    """Every step trained and logged once (a resume goes on from its checkpoint, never training a step twice in the
    record), the run completed and its evaluation scored."""
    steps = [r["step"] for r in read_jsonl(exp / "runs" / run / "metrics.jsonl") if r.get("loss") is not None]
    assert steps == list(range(5, STEPS + 1, 5)), steps
    assert _status(exp, run)["state"] == "completed"
    assert read_json(exp / "runs" / run / "eval" / "epoch_0" / "exact_match" / "scores.json")["samples"] == 4


def test_a_worker_node_lost_mid_run_resumes_on_the_other_node(fault_cluster, spec_in, tmp_path):
    t0 = time.monotonic()
    exp = _spec(spec_in, tmp_path / "lost", fault_cluster.address, [4])
    run = "tiny_r4"
    proc, out = _coordinator(exp)
    try:
        assert wait_for(lambda: _status(exp, run).get("step", 0) >= 12, 180), out.read_text()
        assert wait_for(lambda: bool(_jobs(exp, run)[0]["node"]), 30), _jobs(exp, run)  # recorded while it runs
        lost = _jobs(exp, run)[0]["node"]
        row = json.loads(_tunelab(exp, "status", "--json").stdout)["runs"][0]  # as a person looks meanwhile
        assert (row["state"], row["executor"], row["node"]) == ("running", "ray", lost) and row["eta"], row
        print(_tunelab(exp, "status").stdout)
        lost_at = _status(exp, run)["step"]
        killed = fault_cluster.kill_node(next(i for i in WORKERS if LAYOUT.node_ip(i) == lost))
        assert killed and _status(exp, run)["pid"] in killed  # the training went with its node
        proc.wait(timeout=420)
    finally:
        proc.kill()
        fault_cluster.start_node(next(i for i in WORKERS if LAYOUT.node_ip(i) == lost))  # back for the next test
    said = out.read_text()
    assert proc.returncode == 0, said
    one, two = _jobs(exp, run)
    assert (one["failure"], one["node"]) == ("node_fail", lost), one
    assert two["failure"] == "completed" and two["node"] != lost and two["attempt"] == 2, two
    assert "node_fail: resume from the last checkpoint" in two["reason"], two
    assert _attempts(exp, run) == [(1, lost, "node_fail"), (2, two["node"], "completed")]
    resumed = int(_status(exp, run)["resumed_from"].split("-")[1])
    assert lost_at - 5 <= resumed <= lost_at, (lost_at, resumed)  # at most one checkpoint interval lost
    _trained_once(exp, run)
    evals = [j for j in _jobs(exp, run, "eval") if j["failure"] == "completed"]
    assert len(evals) == 1, _jobs(exp, run, "eval")  # evaluated once, after the training that completed
    print(f"worker node lost at step {lost_at}, resumed from {resumed}: {time.monotonic() - t0:.0f} s")


def test_the_head_restarted_while_runs_wait_in_rays_queue_says_what_was_lost_then_resumes(
        fault_cluster, spec_in, tmp_path):
    t0 = time.monotonic()
    from ray.job_submission import JobSubmissionClient

    exp = _spec(spec_in, tmp_path / "head", fault_cluster.address, [4, 8])
    runs = ["tiny_r4", "tiny_r8"]
    client = JobSubmissionClient(fault_cluster.address, headers=raycluster.headers())
    for i in WORKERS:  # both workers' CPUs taken: tunelab's jobs wait in Ray's queue
        client.submit_job(entrypoint="sleep 600", entrypoint_num_cpus=1, submission_id=f"blocker-{i}-{t0:.0f}")
    done = _tunelab(exp, "run")  # submits and returns (jobs outlive it)
    assert done.returncode == 0, done.stdout + done.stderr
    trains = [j["job_id"].split("@")[0] for r in runs for j in _jobs(exp, r)]
    assert wait_for(lambda: {str(client.get_job_status(t).value) for t in trains} == {"PENDING"}, 60, every=0.5)
    for i in (0, *WORKERS):  # the head goes, and with it the cluster: its workers cannot join a new head
        fault_cluster.kill_node(i)
    for i in (0, *WORKERS):
        fault_cluster.start_node(i)
    assert wait_for(lambda: raycluster.answers(fault_cluster.address), 60), "the new head's job server never answered"
    shown = _tunelab(exp, "status", "--json")
    assert shown.returncode == 0, shown.stderr
    rows = {r["name"]: r for r in json.loads(shown.stdout)["runs"]}
    for r in runs:  # what was lost, said in status: each run's job, lost with the head
        assert rows[r]["state"] == "node_fail", rows[r]
        assert "no longer knows the job (its head restarted)" in rows[r]["detail"], rows[r]
    print(_tunelab(exp, "status").stdout)
    done = _tunelab(exp, "run", "--wait", pace_s="0.05")
    assert done.returncode == 0, done.stdout + done.stderr
    for r in runs:
        one, two = _jobs(exp, r)
        assert (one["failure"], two["failure"], two["attempt"]) == ("node_fail", "completed", 2), (one, two)
        assert [(a, state) for a, _, state in _attempts(exp, r)] == [(1, "node_fail"), (2, "completed")]
        assert _status(exp, r).get("resumed_from") is None  # it had never started: nothing resumed, nothing run twice
        _trained_once(exp, r)
    print(f"head restarted with 2 runs queued: {time.monotonic() - t0:.0f} s")
