"""How many nodes each run spans, and what plan.md says about GPUs and nodes.

A node has `NodeSize.gpus` GPUs: resources.node_gpus in experiment.yaml, else node_gpus in the user config,
else 8, assumed (forecast/gpus.py). A run that asks for more GPUs than its nodes hold is spread over more
nodes here, before anything is estimated or scaffolded, so run.yaml's resources say what the job must ask
the scheduler for; plan.md says which runs were spread (plan/markdown.py), and which do not fit the GPUs
they ask for (the fewest that do, their nodes and time, from each run's estimate: RunEstimate.gpus_needed).
"""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.execute.executors import executor_class
from tunelab.forecast.gpus import NodeSize, even_nodes
from tunelab.rundir.config import RunConfig
from tunelab.spec.resources import ResourcesSpec
from tunelab.userconfig import load_user_config, user_config_path


def node_size(spec_resources: ResourcesSpec) -> NodeSize:
    """The node size and its source: the spec's (before the user config is merged in), the user config's, or
    the assumption."""
    if spec_resources.node_gpus is not None:
        return NodeSize(spec_resources.node_gpus, "resources.node_gpus in experiment.yaml")
    user = load_user_config().node_gpus
    if user is not None:
        return NodeSize(user, f"node_gpus in the user config {user_config_path()}")
    return NodeSize.assumed()


@dataclass(frozen=True)
class NodeRaise:
    """A run spread over more nodes than its spec said: its GPUs exceed what those nodes hold."""

    run: str
    gpus: int
    before: int  # nodes_per_run as the spec had it
    nodes: int  # as the plan resolved it (run.yaml)
    node_gpus: int

    def text(self) -> str:
        return (f"{self.run}: gpus_per_run {self.gpus} exceeds {self.before} node(s) of {self.node_gpus} GPUs: "
                f"nodes_per_run raised to {self.nodes} ({self.gpus // self.nodes} GPUs on each node)")


def spread_over_nodes(runs: list[RunConfig], node: NodeSize) -> tuple[list[NodeRaise], list[str]]:
    """Raise each training run's nodes_per_run to the fewest nodes its GPUs (and processes) split evenly over
    at node.gpus a node; returns the raises and the warnings (a run the executor cannot place, or whose GPUs
    split evenly over no node count)."""
    raises, warnings = [], []
    for cfg in runs:
        res = cfg.resources
        if cfg.training is None or res.gpus_per_run <= node.gpus * res.nodes_per_run:
            continue
        n = even_nodes(res.gpus_per_run, node.gpus, res.nodes_per_run, res.nproc_per_run)
        if n is None:
            warnings.append(f"{cfg.name}: gpus_per_run {res.gpus_per_run} and nproc_per_run {res.nproc_per_run} "
                            f"split evenly over no node count of at most {node.gpus} GPUs each")
            continue
        raises.append(NodeRaise(cfg.name, res.gpus_per_run, res.nodes_per_run, n, node.gpus))
        cfg.resources = res.model_copy(update={"nodes_per_run": n})
    if raises and not executor_class(runs[0].resources.executor).detached:
        warnings.append(f"{len(raises)} run(s) now span several nodes, which the {runs[0].resources.executor} "
                        "executor cannot (it runs jobs on this machine): `tunelab validate` fails them; use a "
                        "scheduler (resources.executor) or fewer GPUs per run")
    return raises, warnings
