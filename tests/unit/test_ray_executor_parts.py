"""The Ray executor's pure parts, each against figures worked by hand: how many jobs a cluster's nodes hold, what a
Ray job's details become, a gated job's state, what a run's jobs ask for, and the runs no node can hold. The
executor against a real cluster: tests/e2e/ray/."""

from __future__ import annotations

import shlex

import pytest

from tunelab.execute.executor import ClusterFacts, JobInfo, JobKind, NodeAsk, NodeFacts
from tunelab.execute.failures import FailureKind, classify
from tunelab.execute.job_states import JobState
from tunelab.execute.ray_cluster import NEVER_SATISFIED, RayRoom, gated_info, job_info, lost_info, split_id
from tunelab.execute.ray_jobs import entrypoint, job_ask, job_env
from tunelab.execute.ray_rest import RayJob
from tunelab.rundir.config import RunConfig
from tunelab.rundir.estimate import RunEstimate
from tunelab.spec import ResourcesSpec

TWO_NODES = ClusterFacts((NodeFacts("10.0.0.1", 8, 2, 64.0), NodeFacts("10.0.0.2", 4, 0, 32.0)), "test cluster")


def test_jobs_the_nodes_hold_at_once():
    assert TWO_NODES.holds(1, 0) == 12  # 8 + 4 one-CPU jobs
    assert TWO_NODES.holds(3, 0) == 3  # 8 // 3 = 2, 4 // 3 = 1
    assert TWO_NODES.holds(2, 1) == 2  # only the first node has GPUs: min(8 // 2, 2 // 1)
    assert TWO_NODES.holds(1, 3) == 0  # no node has 3 GPUs
    assert TWO_NODES.holds(1, 0, most=5) == 5
    assert "2 node(s), 12 CPUs and 2 GPUs in all, the largest 8 CPUs, 2 GPUs, 64 GiB" in TWO_NODES.words()


def _details(status: str, code: int | None, message: str = "", error_type: str | None = None) -> RayJob:
    """A job as the job server's GET /api/jobs/ lists it (the JSON of Ray's JobDetails, the fields that vary here)."""
    return RayJob.from_json({"type": "SUBMISSION", "job_id": None, "submission_id": "tl-train-0", "status": status,
                             "entrypoint": "bash job.sh", "message": message, "error_type": error_type,
                             "metadata": {"tunelab": "train"}, "driver_node_id": "n1", "driver_exit_code": code})


def test_a_ray_jobs_details_in_the_executors_words():
    failed = job_info(_details("FAILED", 3, "Job entrypoint command failed with exit code 3, last logs:\nboom"))
    assert (failed.state, failed.exit_code, failed.ended) == (JobState.FAILED, "3:0", True)
    assert failed.reason == "Job entrypoint command failed with exit code 3, last logs:"
    assert job_info(_details("SUCCEEDED", None)).exit_code == "0:0"
    assert failed.node == "n1" and job_info(_details("FAILED", 3), {"n1": "10.0.0.1"}).node == "10.0.0.1"
    stopped = job_info(_details("STOPPED", None))
    assert stopped.state == JobState.CANCELLED and stopped.ended  # Slurm's STOPPED would be active
    assert not job_info(_details("PENDING", None)).ended


def test_a_job_whose_node_died_or_that_the_cluster_forgot_is_node_fail_and_resumed():
    died = _details("FAILED", None, "Job supervisor actor died: The actor died because its node has died.",
                    "JOB_SUPERVISOR_ACTOR_DIED")
    assert job_info(died).state == JobState.NODE_FAIL
    exited = _details("FAILED", 1, "Job entrypoint command failed with exit code 1", "JOB_ENTRYPOINT_COMMAND_ERROR")
    assert job_info(exited).state == JobState.FAILED  # the run's own failure: no automatic retry
    lost = lost_info("http://head:8265")
    assert lost.state == JobState.NODE_FAIL and "http://head:8265 no longer knows the job" in lost.reason
    assert {classify(i.state, i.exit_code).kind for i in (job_info(died), lost)} == {FailureKind.NODE_FAIL}
    assert FailureKind.NODE_FAIL.retryable


def test_a_gated_job_is_its_real_job_once_submitted_else_pending_or_never_satisfied():
    running_gate, ended_gate = JobInfo(JobState.RUNNING), JobInfo(JobState.COMPLETED, "0:0")
    real = JobInfo(JobState.RUNNING)
    assert gated_info(running_gate, None, "tl-train-1").state == JobState.PENDING
    assert gated_info(ended_gate, real, "tl-train-1") is real
    never = gated_info(ended_gate, None, "tl-train-1")
    assert never.state == JobState.CANCELLED and never.reason.startswith(NEVER_SATISFIED)
    stopped = JobInfo(JobState.CANCELLED)
    assert gated_info(stopped, None, "tl-train-1") is stopped  # cancelled while it waited


def test_a_job_id_names_its_cluster():
    assert split_id("tl-train-ab12@http://10.78.0.11:8265") == ("tl-train-ab12", "http://10.78.0.11:8265")


def _run(tmp_path, **resources) -> RunConfig:
    return RunConfig.model_validate({
        "name": "r", "experiment": "e", "experiment_dir": str(tmp_path), "kind": "finetune",
        "model": {"name": "m", "path": str(tmp_path)}, "dataset": {"name": "d", "path": str(tmp_path / "d.json")},
        "prompt": "{input}", "resources": ResourcesSpec(executor="ray", **resources).model_dump()})


def test_what_a_runs_jobs_ask_for(tmp_path):
    cpu = _run(tmp_path, gpus_per_run=0, nproc_per_run=2)
    assert job_ask(cpu, JobKind.TRAIN) == NodeAsk(2, 0)
    assert job_ask(cpu, JobKind.EVAL) == NodeAsk(1, 0)
    gpu = _run(tmp_path, gpus_per_run=4)
    gpu.estimate = RunEstimate(processes=4)
    assert job_ask(gpu, JobKind.TRAIN) == NodeAsk(4, 4)
    assert job_ask(gpu, JobKind.EVAL) == NodeAsk(1, 1)
    d = tmp_path / "my run"
    assert shlex.split(entrypoint(d, d / "job.sh", d / "ray-train-x.out")) == [
        "cd", str(d), "&&", "exec", "bash", str(d / "job.sh"), ">>", str(d / "ray-train-x.out"), "2>&1"]


@pytest.mark.parametrize(("resources", "why"), [
    ({"gpus_per_run": 4}, "asks one node for 4 CPU(s) and 4 GPU(s); test cluster has 2 node(s)"),
    ({"gpus_per_run": 2, "nodes_per_run": 2}, "asks 2 nodes for 1 CPU(s) and 1 GPU(s) each; 1 hold that: "),
    ({"gpus_per_run": 0, "nodes_per_run": 2, "nproc_per_run": 10}, "asks 2 nodes for 5 CPU(s) each; 1 hold that"),
    ({"gpus_per_run": 0, "nodes_per_run": 2, "nproc_per_run": 8}, None),
    ({"gpus_per_run": 2}, None),
])
def test_runs_no_node_can_hold_are_refused_in_one_line(tmp_path, resources, why):
    cfg = _run(tmp_path, **resources)
    room = RayRoom(TWO_NODES, {"r": job_ask(cfg, JobKind.TRAIN)})
    said = room.never(cfg)
    assert (said is None) if why is None else (why in said)


def test_at_most_twice_what_the_nodes_hold_goes_to_ray_at_once(tmp_path):
    cfg = _run(tmp_path, gpus_per_run=2)  # holds(2, 2) = 1 on TWO_NODES: two jobs (a run and its gate) at once
    room = RayRoom(TWO_NODES, {"r": job_ask(cfg, JobKind.TRAIN)})
    assert room.take(cfg, 2, 0) == {}
    assert room.take(cfg, 2, 1) is None and "2 jobs on the Ray cluster" in room.waiting()


def test_the_runs_address_wins_over_ray_address(tmp_path, monkeypatch):
    from tunelab.errors import TunelabError
    from tunelab.execute.ray_cluster import RayExecutor

    monkeypatch.setenv("RAY_ADDRESS", "http://from-env:8265")
    ex = RayExecutor()
    ex.poll_interval([_run(tmp_path, address="http://from-spec:8265")])
    assert ex.address == "http://from-spec:8265"
    monkeypatch.delenv("RAY_ADDRESS")
    with pytest.raises(TunelabError, match="no cluster address: set resources.address or RAY_ADDRESS"):
        RayExecutor().client()


def test_a_run_on_one_node_and_at_most_one_gpu_is_trained_then_evaluated_by_one_job(tmp_path):
    """Such a run is a group of one (ray-run.sh: its job.sh, then its ray-eval.sh, only if the training succeeded);
    a run holding several GPUs or nodes, or a control, is not: its evaluation is a job of its own behind a gate."""
    import subprocess

    from tunelab.execute.executor import GroupKind
    from tunelab.execute.ray_cluster import RayExecutor

    cpu, one_gpu = _run(tmp_path / "a", gpus_per_run=0), _run(tmp_path / "b", gpus_per_run=1)
    four, spanning = _run(tmp_path / "c", gpus_per_run=4), _run(tmp_path / "d", gpus_per_run=0, nodes_per_run=2)
    control = cpu.model_copy(update={"kind": "control", "name": "base"})
    ex = RayExecutor("http://head:8265")
    groups = ex.groups([cpu, one_gpu, four, spanning, control])
    assert [(g.kind, [c.experiment_dir for c in g.runs]) for g in groups] == [
        (GroupKind.NODE, [str(tmp_path / "a")]), (GroupKind.NODE, [str(tmp_path / "b")])]
    script, array = ex.group_script(groups[0])
    assert array is None and script == cpu.run_dir / "ray-run.sh" and (cpu.run_dir / "ray-eval.sh").is_file()
    # the script as Ray runs it, with the two it calls standing in: the evaluation only after a training that succeeded
    for training, code, ran in (("exit 3", 3, "trained\n"), ("exit 0", 0, "trained\nevaluated\n")):
        (cpu.run_dir / "job.sh").write_text(f"echo trained\n{training}\n")
        (cpu.run_dir / "ray-eval.sh").write_text("echo evaluated\n")
        done = subprocess.run(["bash", str(script)], capture_output=True, text=True)
        assert (done.returncode, done.stdout) == (code, ran)
    # both of its jobs' rows read the one job's log
    assert {ex.log(cpu.run_dir, kind, "tl-run-ab12@http://head:8265") for kind in JobKind} == {
        cpu.run_dir / "ray-run-tl-run-ab12.out"}
    assert ex.log(cpu.run_dir, JobKind.EVAL, "tl-eval-ab12@http://head:8265") == cpu.run_dir / "ray-eval-tl-eval-ab12.out"


def test_a_ray_jobs_processes_share_the_cpus_it_asked_for_not_the_nodes():
    """Ray places a job by the CPUs it asks for but pins it to no core: its processes' threads must divide the ask
    (a one-CPU job trained at every core of the node, 2 threads here, before TUNELAB_RAY_CPUS)."""
    from tunelab.host.cores import Limit, usable_cpus
    from tunelab.host.threads import decide

    one = decide(1, job_env(NodeAsk(1, 0)))
    assert (one.torch, one.limit, one.explicit) == (1, Limit.RAY, False)
    assert one.source == "TUNELAB_RAY_CPUS=1 (the Ray job's CPUs) / 1 process(es)"
    many = len(usable_cpus()) + 4  # an ask above this machine's cores (another node's size) never raises the count
    assert decide(2, job_env(NodeAsk(many, 0))).cores_given == decide(2, {}).cores_given
