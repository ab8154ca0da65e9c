"""The devices a sweep's runs are placed on where its executor reads its cluster (Ray): the nodes as they are now,
each holding as many runs at once as it has the CPUs and GPUs each run asks of one node — read through the
executor seam (execute/executors.cluster_facts), so the plan's makespan, the deadline's verdict and status's
re-plan place runs on the real nodes by the same forecast as local and Slurm (forecast/sweeptime.sweep_devices).
A cluster that could not be read is planned from the spec alone: every run at once, and the source says why."""

from __future__ import annotations

from tunelab.catalog import GPU
from tunelab.execute import executors  # executors.cluster_facts, looked up when called (tests inject a cluster)
from tunelab.execute.executor import NodeAsk
from tunelab.execute.schedule import Device
from tunelab.rundir.config import RunConfig
from tunelab.rundir.estimate import RunEstimate
from tunelab.spec.resources import ResourcesSpec


def devices_held(est: RunEstimate | None, gpu: GPU | None) -> int:
    """The devices one run holds in the forecast: its processes on GPUs, else one (forecast/sweeptime.timeline)."""
    return est.processes if est is not None and gpu is not None else 1


def cluster_devices(resources: ResourcesSpec, runs: list[RunConfig], estimates: dict[str, RunEstimate],
                    gpu: GPU | None) -> tuple[list[Device], str] | None:
    """The nodes' room for these runs as forecast devices, and where it came from; None where the executor reads no
    cluster. Every node offers room for the largest ask among the runs (what its fine-tuned runs ask: controls ask
    less), `devices_held` devices a run, node after node (ClusterFacts.slots): a run never spans two nodes."""
    read = executors.cluster_facts(resources)
    if read is None:
        return None
    if read.facts is None:
        n = max(1, len(runs))
        return ([Device(f"job{i}") for i in range(n)],
                f"every run at once: the cluster {read.address or '(no address)'} could not be read ({read.problem}), "
                "so the plan goes by the spec alone")
    asks = [a for c in runs if (a := executors.node_ask(c)) is not None]
    ask = max(asks, key=lambda a: (a.gpus, a.cpus), default=NodeAsk(1, 0))
    each = max((devices_held(estimates.get(c.name), gpu) for c in runs), default=1)
    facts = read.facts
    slots = facts.slots(ask, each)
    at_once = len(slots) // each
    nodes = ", ".join(n.words() for n in facts.nodes) or "none alive"
    return ([Device(s) for s in slots],
            f"the nodes of {facts.source} — {nodes} — {at_once} run(s) at once, each asking one node for "
            f"{ask.words()}; queue wait not predicted")
