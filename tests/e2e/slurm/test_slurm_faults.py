"""What a real cluster does to a sweep that `tunelab run --executor slurm --wait` follows, on the real daemons
(scripts/slurm-dev-cluster; no mocks): the controller hung while a job is submitted and restarted while it runs,
accounting down while jobs end, a running job requeued and then preempted, a one-node job's node lost.

Every run is the same tiny run (one epoch of 40 steps, a checkpoint every 5, steps paced so it is still training
when the fault comes; tunelab.faults.pace_step). The first one meets only the controller's and accounting's faults,
which never touch its training: it is the reference the interrupted runs must end equal to (the same adapter up to
float summation order), as test_slurm_multinode.py does for a lost node of a run spanning nodes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from waiting import wait_for

from tunelab.execute.slurm_cli import SlurmExecutor
from tunelab.execute.sweep import run_sweep
from tunelab.fsutil import read_json, read_jsonl
from tunelab.ledger import store as ledger
from tunelab.rundir.config import load_run_config
from tunelab.scaffold.write import scaffold

# the controller paused and restarted, accounting stopped, the host's node preempted: no other module's jobs beside
# a long fault run (2-3 minutes): `make test-faults`, outside `make test` and its 15-minute budget
pytestmark = [pytest.mark.slurm, pytest.mark.slurm_alone, pytest.mark.slow, pytest.mark.fault_run,
              pytest.mark.usefixtures("slurm_cluster")]
STEPS = 40  # 320 training examples / micro-batch 8, one epoch
RUN = "tiny_r4"


def _spec(spec_in, directory: Path, **slurm) -> Path:
    return spec_in(directory, name=directory.name, factors={"lora_rank": [4]}, controls=False,
                   training={"epochs": 1, "logging_steps": 5, "checkpoint_every": 5},
                   eval={"max_tokens": 8, "limit": 4},
                   resources={"executor": "slurm", "gpus_per_run": 0, "max_retries": slurm.pop("max_retries", 2),
                              "slurm": {"time_limit": "15", "submit_delay_s": 0.1, "poll_interval_s": 0.5, **slurm}})



def _status(exp: Path) -> dict:
    return read_json(exp / "runs" / RUN / "status.json", default={}) or {}


def _step(exp: Path) -> int:
    return _status(exp).get("step") or 0


def _jobs(exp: Path, kind: str = "train") -> list[dict]:
    return [j for j in ledger.query(exp, "SELECT * FROM jobs ORDER BY id") if j["kind"] == kind]


def _attempts(exp: Path) -> list[tuple]:
    return [(a["attempt"], a["job_id"], a["state"])
            for a in ledger.query(exp, "SELECT * FROM attempts ORDER BY id")]


class Coordinator:
    """`tunelab run --wait` as a person starts it, in a process of its own (its output in a file); the paced steps
    reach the jobs through sbatch's exported environment."""

    def __init__(self, exp: Path, pace_s: str):
        self.out = exp.parent / "coordinator.out"
        env = dict(os.environ, TUNELAB_FAULT_STEP_S=pace_s, HF_HUB_OFFLINE="1")
        with self.out.open("w") as fh:
            self.proc = subprocess.Popen([sys.executable, "-m", "tunelab", "run", str(exp), "--wait"], env=env,
                                         stdout=fh, stderr=subprocess.STDOUT, text=True)

    def said(self) -> str:
        return self.out.read_text()

    def finish(self, timeout: float = 240) -> str:
        try:
            self.proc.wait(timeout=timeout)
        finally:
            self.proc.kill()
        assert self.proc.returncode == 0, self.said()
        return self.said()


def _sq(*args: str) -> str:
    return subprocess.run(["squeue", "-h", *args], capture_output=True, text=True).stdout.strip()


def _jobs_in(run_dir: Path) -> dict[str, list[str]]:
    """{train|eval: ids} of every job squeue knows (finished ones too, for MinJobAge) that runs in `run_dir`."""
    out: dict[str, list[str]] = {"train": [], "eval": []}
    for line in _sq("-t", "all", "-o", "%i|%j|%Z").splitlines():
        job, name, where = line.split("|")
        if Path(where) == run_dir:
            out[name.rsplit("-", 1)[-1]].append(job)
    return out


def _release(job: str) -> None:
    """A requeued job waits out Slurm's BeginTime (2 min); start it now, as an admin would (not within the second of
    the requeue: its old credential is revoked with one-second resolution)."""
    assert wait_for(lambda: _sq("-j", job, "-o", "%T") == "PENDING", 60, every=0.2), _sq("-j", job, "-o", "%T")
    time.sleep(2.0)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)


def _adapter(exp: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(exp / "runs" / RUN / "checkpoints" / "epoch_0" / "adapter_model.safetensors")


def _assert_same_training(exp: Path, reference: Path) -> None:
    """Every step trained and logged once, and the adapter the uninterrupted run's: a resume restores weights,
    optimizer, scheduler and RNG, so the two agree up to the order of float sums (1e-5 absolute; one step more,
    less or on other batches moves a weight by about the learning rate, 2e-3)."""
    import torch

    steps = [r["step"] for r in read_jsonl(exp / "runs" / RUN / "metrics.jsonl") if r.get("loss") is not None]
    assert steps == list(range(5, STEPS + 1, 5)), steps
    ref, got = _adapter(reference), _adapter(exp)
    assert sorted(got) == sorted(ref)
    worst = max((got[k] - ref[k]).abs().max().item() for k in ref)
    assert all(torch.allclose(got[k], ref[k], rtol=0, atol=1e-5) for k in ref), worst


@pytest.fixture(scope="module")
def controller_faults(tmp_path_factory, spec_in, slurm_admin) -> tuple[Path, str, dict]:
    """One run through a hung controller at its submission, then accounting down while it trains and its jobs end,
    the controller restarted meanwhile; then accounting back. Returns (experiment, coordinator output, jobs seen by
    squeue)."""
    t0 = time.monotonic()
    marks = []
    exp = _spec(spec_in, tmp_path_factory.mktemp("faults") / "ctld").parent
    scaffold(exp / "experiment.yaml")
    slurm_admin.pause_ctld()  # sbatch times out (Socket timed out): the controller may have taken the job anyway
    try:
        coordinator = Coordinator(exp, "0.3")
        assert wait_for(lambda: "could not reach the Slurm controller" in coordinator.said(), 60), coordinator.said()
    finally:
        slurm_admin.resume_ctld()
    marks.append(f"hung sbatch {time.monotonic() - t0:.0f} s")
    assert wait_for(lambda: _step(exp) >= 3, 120), coordinator.said()
    marks.append(f"training {time.monotonic() - t0:.0f} s")
    slurm_admin.stop_dbd()  # sacct fails from here until the jobs have ended
    try:
        slurm_admin.restart_ctld(2)  # squeue and sbatch fail for seconds too; the job runs on
        marks.append(f"controller back {time.monotonic() - t0:.0f} s")
        said = coordinator.finish()
        marks.append(f"judged {time.monotonic() - t0:.0f} s")
        names = _jobs_in(exp / "runs" / RUN)
        assert all(j["exit_code"] is None for j in _jobs(exp) + _jobs(exp, "eval")), _jobs(exp) + _jobs(exp, "eval")
    finally:
        slurm_admin.start_dbd()
    # judged again once accounting answers (slurmctld sends it what it kept): as a person re-running `tunelab run`
    assert wait_for(lambda: run_sweep(SlurmExecutor(), exp) == {} and
                     all(j["exit_code"] for j in _jobs(exp) + _jobs(exp, "eval")), 120, every=2), _jobs(exp)
    print(f"controller and accounting faults: {time.monotonic() - t0:.0f} s ({', '.join(marks)})")
    return exp, said, names


def test_controller_hung_and_restarted_and_accounting_down_cost_nothing(controller_faults):
    exp, said, names = controller_faults
    (train,), (ev,) = _jobs(exp), _jobs(exp, "eval")
    # the submission whose answer was lost was found by its token, not made twice; nothing submitted again
    assert names == {"train": [train["job_id"]], "eval": [ev["job_id"]]}, names
    assert said.count("submitted tiny_r4 train job") == 1 and ev["depends_on"] == train["job_id"], said
    assert not (exp / "runs" / RUN / ".job.sbatch.sbatch-token").exists()  # found, so forgotten
    assert train["failure"] == "completed" and ev["failure"] == "completed", (train, ev)
    assert train["exit_code"] == "0:0" and train["state"] == "COMPLETED" and train["elapsed"], train
    assert _attempts(exp) == [(1, train["job_id"], "completed")]
    status = _status(exp)
    assert status["state"] == "completed" and status["restarts"] == 0, status  # training never noticed
    log = (exp / "runs" / RUN / f"slurm-train-{train['job_id']}.out").read_text()
    assert log.count("[tunelab job]") == 1
    assert read_json(exp / "runs" / RUN / "eval" / "epoch_0" / "exact_match" / "scores.json")["samples"] == 4


def test_requeued_then_preempted_resumes_each_time_and_spends_no_retry(controller_faults, tmp_path, spec_in):
    reference = controller_faults[0]
    t0 = time.monotonic()
    exp = _spec(spec_in, tmp_path / "preempt", max_retries=0).parent  # a retry spent would be refused
    scaffold(exp / "experiment.yaml")
    coordinator = Coordinator(exp, "0.25")
    assert wait_for(lambda: _step(exp) >= 8, 120), coordinator.said()
    job = _jobs(exp)[0]["job_id"]
    subprocess.run(["scontrol", "requeue", job], check=True)  # SIGTERM: the trainer saves where it is
    _release(job)
    assert wait_for(lambda: _status(exp).get("restarts") == 1 and _status(exp)["state"] == "running", 120)
    first = int(_status(exp)["resumed_from"].split("-")[1])
    assert wait_for(lambda: _step(exp) >= first + 5, 120)
    node = _sq("-j", job, "-o", "%N")
    subprocess.run(["sbatch", "-p", "urgent", "-w", node, "--exclusive", "-o", "/dev/null", "--wrap", "sleep 1"],
                   check=True, capture_output=True)  # a higher tier's job takes the node: ours ends PREEMPTED
    said = coordinator.finish()
    one, two = _jobs(exp)
    assert (one["job_id"], one["state"], one["failure"], one["attempt"]) == (job, "PREEMPTED", "preempted", 1), one
    assert two["attempt"] == 2 and "preempted: resume from the last checkpoint" in two["reason"], two
    assert two["failure"] == "completed" and load_run_config(exp / "runs" / RUN).attempt == 2, said
    # the requeued start and the preempted job are attempts of their own, as preemptions; one job per attempt
    assert _attempts(exp) == [(1, job, "preempted"), (1, job, "preempted"), (2, two["job_id"], "completed")]
    log = (exp / "runs" / RUN / f"slurm-train-{job}.out").read_text()
    assert "DUE TO JOB REQUEUE" in log and "DUE TO PREEMPTION" in log and log.count("[tunelab job]") == 2
    second = int(_status(exp)["resumed_from"].split("-")[1])
    assert f"saved on SIGTERM: stopped at step {second}" in log  # the preempted start saved where it was
    assert _status(exp)["restarts"] == 2 and 8 <= first < second < STEPS, _status(exp)
    _assert_same_training(exp, reference)
    print(f"requeue + preemption: {time.monotonic() - t0:.0f} s")


def test_a_one_node_jobs_lost_node_is_requeued_resumed_and_recorded_node_fail(
        controller_faults, tmp_path, spec_in, slurm_nodes):
    reference = controller_faults[0]
    t0 = time.monotonic()
    exp = _spec(spec_in, tmp_path / "lost", partition=slurm_nodes.partition).parent
    scaffold(exp / "experiment.yaml")
    coordinator = Coordinator(exp, "0.25")
    assert wait_for(lambda: _step(exp) >= 12, 120), coordinator.said()
    job = _jobs(exp)[0]["job_id"]
    node = _sq("-j", job, "-o", "%N")
    try:
        lost_at = _step(exp)
        slurm_nodes.fail(node)  # SIGKILL: no save; the job requeue-able, Slurm starts it again on the other node
        _release(job)
        said = coordinator.finish()
    finally:
        slurm_nodes.restore()
    (train,) = _jobs(exp)  # no job of tunelab's own: Slurm's requeue resumed it
    assert train["failure"] == "completed" and train["node"] != node, (train, said)
    assert _attempts(exp) == [(1, job, "node_fail"), (1, job, "completed")]
    acct = subprocess.run(["sacct", "-n", "-P", "-D", "-X", "-S", "2000-01-01", "-j", job, "--format=State"],
                          capture_output=True, text=True, check=True).stdout.split()
    assert acct == ["NODE_FAIL", "COMPLETED"], acct
    resumed = int(_status(exp)["resumed_from"].split("-")[1])
    assert lost_at - 5 <= resumed <= lost_at + 5, (lost_at, resumed)  # at most one checkpoint interval lost
    _assert_same_training(exp, reference)
    print(f"one-node job, node lost: {time.monotonic() - t0:.0f} s")
