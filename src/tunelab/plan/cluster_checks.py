"""What plan and validate say of the cluster an executor reads (Ray): plan.md's "Cluster" section — its nodes, or
that it could not be reached and the plan went by the spec alone — and validate's refusal of a run no node can hold,
in one line naming the run, what it asks of one node and the largest node. The cluster is read through the executor
seam (execute/executors.cluster_facts: a short timeout, read once per plan); the core never imports Ray."""

from __future__ import annotations

from tunelab.execute import executors  # executors.cluster_facts, looked up when called (tests inject a cluster)
from tunelab.rundir.config import RunConfig
from tunelab.spec.resources import ResourcesSpec


def cluster_lines(resources: ResourcesSpec) -> list[str]:
    """plan.md's "Cluster" section: the nodes read now, or why they could not be ([] where no cluster is read)."""
    read = executors.cluster_facts(resources)
    if read is None:
        return []
    lines = ["## Cluster", ""]
    if read.facts is None:
        return lines + [f"The cluster at {read.address or '(no address)'} could not be reached ({read.problem}): "
                        "this plan goes by the spec alone — every run at once, and no run is checked against the "
                        "nodes. `tunelab validate` and `tunelab run` read it again.", ""]
    facts = read.facts
    lines += [f"Read from {facts.source} when this plan was made: {len(facts.nodes)} alive node(s). The schedule "
              "places each run on one node that has the CPUs and GPUs it asks for.", "",
              "| Node | CPUs | GPUs | Memory (GiB) |", "|---|---|---|---|"]
    lines += [f"| {n.name} | {n.cpus} | {n.gpus} | {n.memory_gib:.1f} |" for n in facts.nodes]
    return lines + [""]


def cluster_refusals(runs: list[RunConfig]) -> dict[str, str]:
    """{run: its one error} for each run its cluster cannot hold: the run, what it asks of one node (of each, for a
    run spanning nodes) and what the cluster's nodes have. {} where the cluster is not read or could not be."""
    out = {}
    for cfg in runs:
        read = executors.cluster_facts(cfg.resources)
        ask = executors.node_ask(cfg)
        facts = read.facts if read is not None else None
        why = facts.refusal(ask, cfg.resources.nodes_per_run) if facts is not None and ask is not None else None
        if why is not None:
            out[cfg.name] = f"{cfg.name}: {why}"
    return out


def nodes_text(devices: list[str]) -> str:
    """A run's place on a cluster's nodes in words ('node 10.0.0.1'), from the forecast's 'node:<name>:<i>' devices."""
    names = dict.fromkeys(d.split(":", 1)[1].rsplit(":", 1)[0] for d in devices)
    return ", ".join(f"node {n}" for n in names)
