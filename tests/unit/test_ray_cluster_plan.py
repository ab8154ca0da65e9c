"""The plan reads the cluster an executor reads (Ray), from hand-built ClusterFacts injected at the seam
(execute/executors.cluster_facts): the forecast's devices are the nodes' room, runs are placed on one node each by
the same forecast as local and Slurm (forecast/deadline.judge), validate refuses a run no node holds in one line,
plan.md names the nodes or says the cluster was not reached — and reading a cluster that does not answer gives up
within its timeout. The real cluster: tests/e2e/ray/."""

from __future__ import annotations

import math
import socket

import pytest

from tunelab.catalog import resolve_gpu
from tunelab.execute import executors
from tunelab.execute.executor import ClusterFacts, ClusterRead, NodeAsk, NodeFacts
from tunelab.forecast.deadline import RunTimeline, judge
from tunelab.forecast.sweeptime import cluster_devices
from tunelab.plan.validate import cluster_lines, cluster_refusals, nodes_text
from tunelab.rundir.config import RunConfig
from tunelab.rundir.estimate import RunEstimate
from tunelab.spec import ResourcesSpec

# A: 16 CPUs and 4 GPUs; B: 8 CPUs and 3 GPUs; C: 2 CPUs, no GPU
NODES = ClusterFacts((NodeFacts("10.0.0.1", 16, 4, 128.0), NodeFacts("10.0.0.2", 8, 3, 64.0),
                      NodeFacts("10.0.0.3", 2, 0, 8.0)), "Ray cluster http://head:8265")


def _run(tmp_path, name: str = "r", kind: str = "finetune", **resources) -> RunConfig:
    return RunConfig.model_validate({
        "name": name, "experiment": "e", "experiment_dir": str(tmp_path), "kind": kind,
        "model": {"name": "m", "path": str(tmp_path)}, "dataset": {"name": "d", "path": str(tmp_path / "d.json")},
        "prompt": "{input}", "resources": ResourcesSpec(executor="ray", **resources).model_dump()})


@pytest.fixture
def cluster(monkeypatch):
    """cluster(read): what executors.cluster_facts answers from now on (the seam the core reads a cluster by)."""
    def inject(read: ClusterRead | None) -> None:
        monkeypatch.setattr(executors, "cluster_facts", lambda resources: read)
    return inject


def test_a_node_holds_what_its_cpus_and_gpus_allow_and_slots_never_span_nodes():
    two_gpus = NodeAsk(2, 2)
    assert [n.holds(two_gpus) for n in NODES.nodes] == [2, 1, 0]  # 4 // 2; min(8 // 2, 3 // 2); no GPU
    assert NODES.slots(two_gpus, 2) == ["node:10.0.0.1:0", "node:10.0.0.1:1", "node:10.0.0.1:2", "node:10.0.0.1:3",
                                        "node:10.0.0.2:0", "node:10.0.0.2:1"]  # B's third GPU holds no run
    assert NODES.slots(NodeAsk(4, 0)) == [f"node:10.0.0.1:{i}" for i in range(4)] + [
        "node:10.0.0.2:0", "node:10.0.0.2:1"]  # 16 // 4 and 8 // 4; C's 2 CPUs hold none
    assert NODES.refusal(NodeAsk(1, 4)) is None
    assert NODES.refusal(NodeAsk(1, 8)) == (
        "asks one node for 1 CPU(s) and 8 GPU(s); Ray cluster http://head:8265 has 3 node(s), 26 CPUs and 7 GPUs "
        "in all, the largest 16 CPUs, 4 GPUs, 128 GiB")


def _line(run: str, seconds: float, gpus: int = 1) -> RunTimeline:
    return RunTimeline(run=run, kind="finetune", gpus=gpus, total_s=seconds)


def test_cpu_runs_are_placed_on_the_nodes_and_the_makespan_follows(tmp_path, cluster):
    small = ClusterFacts((NodeFacts("10.0.0.1", 2, 0, 8.0), NodeFacts("10.0.0.2", 1, 0, 4.0)), "Ray cluster X")
    cluster(ClusterRead(small, address="http://x:8265"))
    runs = [_run(tmp_path, f"r{i}", gpus_per_run=0) for i in range(4)]  # each asks one CPU
    devices, source = cluster_devices(runs[0].resources, runs, {}, None)
    assert [d.id for d in devices] == ["node:10.0.0.1:0", "node:10.0.0.1:1", "node:10.0.0.2:0"]
    assert "10.0.0.1 (2 CPUs, 0 GPUs, 8 GiB), 10.0.0.2 (1 CPUs, 0 GPUs, 4 GiB)" in source
    assert "3 run(s) at once, each asking one node for 1 CPU(s)" in source
    # longest first: r0 (30 s) and r1 (20 s) on node 1, r2 (10 s) on node 2; r3 (10 s) waits for r2, ends at 20 s
    plan = judge("none", math.inf, [_line("r0", 30), _line("r1", 20), _line("r2", 10), _line("r3", 10)], devices,
                 source)
    where = {r.run: (nodes_text(r.devices), r.start_s, r.end_s) for r in plan.runs}
    assert where == {"r0": ("node 10.0.0.1", 0.0, 30.0), "r1": ("node 10.0.0.1", 0.0, 20.0),
                     "r2": ("node 10.0.0.2", 0.0, 10.0), "r3": ("node 10.0.0.2", 10.0, 20.0)}
    assert plan.makespan_s == 30.0


def test_gpu_runs_hold_their_gpus_on_one_node(tmp_path, cluster):
    cluster(ClusterRead(NODES, address="http://head:8265"))
    runs = [_run(tmp_path, f"r{i}", gpus_per_run=2) for i in range(4)]  # each asks 2 CPUs and 2 GPUs
    estimates = {c.name: RunEstimate(run=c.name, processes=2) for c in runs}
    devices, _ = cluster_devices(runs[0].resources, runs, estimates, resolve_gpu("A100-80GB"))  # 2 devices a run
    assert len(devices) == 6  # A holds 2 such runs, B 1 (its third GPU idle), C none
    plan = judge("none", math.inf, [_line(f"r{i}", 100 - i, gpus=2) for i in range(4)], devices, "")
    placed = {r.run: (nodes_text(r.devices), len(r.devices), r.start_s) for r in plan.runs}
    assert placed == {"r0": ("node 10.0.0.1", 2, 0.0), "r1": ("node 10.0.0.1", 2, 0.0),
                      "r2": ("node 10.0.0.2", 2, 0.0), "r3": ("node 10.0.0.2", 2, 98.0)}  # r3 after r2 (98 s)
    assert plan.makespan_s == 98.0 + 97.0


def test_a_cluster_not_reached_is_planned_from_the_spec_alone_and_plan_md_says_so(tmp_path, cluster):
    cluster(ClusterRead(None, "Ray job server http://head:8265 did not answer within 5 s: timed out",
                        "http://head:8265"))
    runs = [_run(tmp_path, f"r{i}", gpus_per_run=0) for i in range(3)]
    devices, source = cluster_devices(runs[0].resources, runs, {}, None)
    assert [d.id for d in devices] == ["job0", "job1", "job2"]
    assert source.startswith("every run at once: the cluster http://head:8265 could not be read (Ray job server")
    text = "\n".join(cluster_lines(runs[0].resources))
    assert "## Cluster" in text and "could not be reached (Ray job server http://head:8265 did not answer" in text
    assert "goes by the spec alone" in text
    assert cluster_refusals(runs) == {}  # nothing refused from a cluster not read


def test_plan_md_lists_the_nodes_read(tmp_path, cluster):
    cluster(ClusterRead(NODES, address="http://head:8265"))
    lines = cluster_lines(_run(tmp_path).resources)
    assert "| 10.0.0.2 | 8 | 3 | 64.0 |" in lines and "| 10.0.0.3 | 2 | 0 | 8.0 |" in lines
    cluster(None)  # an executor that reads no cluster (local, Slurm): no section
    assert cluster_lines(ResourcesSpec()) == []


def test_validate_refuses_a_run_no_node_holds_in_one_line(tmp_path, cluster):
    cluster(ClusterRead(NODES, address="http://head:8265"))
    fits, too_big = _run(tmp_path, "fits", gpus_per_run=4), _run(tmp_path, "too_big", gpus_per_run=6)
    assert cluster_refusals([fits, too_big]) == {"too_big": (
        "too_big: asks one node for 6 CPU(s) and 6 GPU(s); Ray cluster http://head:8265 has 3 node(s), 26 CPUs and "
        "7 GPUs in all, the largest 16 CPUs, 4 GPUs, 128 GiB")}


def test_a_cluster_that_does_not_answer_is_given_up_within_the_timeout_and_read_once(monkeypatch):
    """A job server that accepts the connection and never answers: the read fails within its timeout, its problem
    says so, and a second read in the same plan is the first's (the cluster is not asked again)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the kernel accepts; nobody ever answers
        address = f"http://127.0.0.1:{silent.getsockname()[1]}"
        monkeypatch.setattr(executors, "CLUSTER_TIMEOUT_S", 0.5)
        monkeypatch.setattr(executors, "_read", {})
        resources = ResourcesSpec(executor="ray", address=address)
        read = executors.cluster_facts(resources)
        assert read is not None and read.facts is None and read.address == address
        assert read.problem.startswith(f"Ray job server {address} did not answer within 0.5 s")
        assert executors.cluster_facts(resources) is read
    assert executors.cluster_facts(ResourcesSpec()) is None  # the local executor reads no cluster
