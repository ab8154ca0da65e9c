"""Where this job process sits when a run spans nodes, and the torchrun arguments that follow from it.

One job process per node (srun on Slurm; on Ray a task in its own bundle of a placement group, execute/ray_span.py),
each starting torchrun; the nodes meet at a c10d rendezvous on the first node, on a
port derived from the job id, so every node computes the same endpoint with nothing exchanged and two jobs sharing a
first node get different ports. Pure (environment in, argv out), so tested without a cluster."""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.host.spanning import JOB_MODULE, NODE_ADDRESS_ENV, SPAN_ENV

RDZV_PORT_BASE, RDZV_PORT_SPAN = 20000, 10000  # unprivileged, below Linux's ephemeral range (32768-60999)
FIELD = "resources.nodes_per_run"


@dataclass(frozen=True)
class NodePlace:
    """This job process's node among the run's nodes (one Slurm job step spanning all of them)."""

    nodes: int
    node_rank: int  # SLURM_NODEID: 0 is the allocation's first node, which hosts the rendezvous
    first_host: str
    job_id: str
    address: str | None = None  # this node's address as its cluster knows it (Ray); else torch asks the hostname

    @property
    def is_first(self) -> bool:
        """The first node's job process alone does the job-level writes (GPU samples, a launch failure)."""
        return self.node_rank == 0

    @property
    def endpoint(self) -> str:
        return f"{self.first_host}:{rdzv_port(self.job_id)}"


def rdzv_port(job_id: str) -> int:
    """A job's rendezvous port: fixed by its id (a requeued job keeps it), where no ephemeral port goes; a Slurm id
    is a number, a Ray submission id is hashed (crc32: the same on every node)."""
    key = int(job_id) if job_id.isdigit() else zlib.crc32(job_id.encode())
    return RDZV_PORT_BASE + key % RDZV_PORT_SPAN


def first_host(nodelist: str) -> str:
    """The first host of a Slurm hostlist expression ('tl-node[1-2]' -> 'tl-node1', 'gpu[007-009,012],cpu1' ->
    'gpu007', 'a1,b2' -> 'a1'): Slurm lists an allocation's nodes in node-id order, so it is node 0."""
    depth, end = 0, len(nodelist)
    for i, ch in enumerate(nodelist):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            end = i
            break
    first = re.sub(r"\[([^\]\-,]+)[^\]]*\]", r"\1", nodelist[:end].strip())
    if not first or any(c in first for c in "[],"):
        raise ValueError(f"not a Slurm hostlist: {nodelist!r}")
    return first


def node_place(env: Mapping[str, str], nodes: int, run_yaml: Path) -> NodePlace | None:
    """None for a one-node run; else this process's place, from the Slurm job step srun started (one task per
    node). A run that spans nodes trains nowhere else: outside such a step it is an error naming the field."""
    if nodes <= 1:
        return None
    if SPAN_ENV[1] in env:
        return _ray_place(env, nodes, run_yaml)
    job, step_nodes = env.get("SLURM_JOB_ID"), env.get("SLURM_STEP_NUM_NODES")
    if not job:
        raise TunelabError(f"this run spans {nodes} nodes and trains only inside a Slurm allocation of {nodes} "
                           "nodes (`tunelab run --executor slurm`; the local executor runs one node)",
                           file=run_yaml, field=FIELD)
    if step_nodes is None or "SLURM_NODEID" not in env:
        raise TunelabError(f"this run spans {nodes} nodes: start one job process per node with srun (as "
                           "job.sbatch does), not in the batch script alone", file=run_yaml, field=FIELD)
    if int(step_nodes) != nodes:
        raise TunelabError(f"the Slurm job step spans {step_nodes} node(s), the run {nodes}", file=run_yaml,
                           field=FIELD)
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or ""
    try:
        place = NodePlace(nodes, int(env["SLURM_NODEID"]), first_host(nodelist), job)
        rdzv_port(job)
    except ValueError as exc:  # no node list, one this parser cannot read, a job id that is not a number
        raise TunelabError(f"cannot read the Slurm allocation (SLURM_JOB_ID, SLURM_NODEID, SLURM_JOB_NODELIST): "
                           f"{exc}", file=run_yaml, field=FIELD) from None
    return place


def _ray_place(env: Mapping[str, str], nodes: int, run_yaml: Path) -> NodePlace:
    """This process's place as the Ray executor's spanning job set it: the node's rank, the first node's address."""
    try:
        told, rank, host, job = (env[k] for k in SPAN_ENV)
        if int(told) != nodes:
            raise ValueError(f"the job reserved {told} node(s), the run spans {nodes}")
        return NodePlace(nodes, int(rank), host, job, env.get(NODE_ADDRESS_ENV) or None)
    except (KeyError, ValueError) as exc:
        raise TunelabError(f"cannot read the Ray job's node place ({', '.join(SPAN_ENV)}): {exc}", file=run_yaml,
                           field=FIELD) from None


def torchrun_args(place: NodePlace | None, nproc_per_node: int, argv: list[str], log_dir: str) -> list[str]:
    """torchrun's arguments for this node: alone a standalone rendezvous on a free port; several the c10d rendezvous at
    the first node, the job id its id. No restarts (Slurm's verdict goes to tunelab's retry); no --node-rank (c10d
    ignores it): rank 0 is whichever node c10d puts first, and only it writes run files. `log_dir`: the agent's dir
    for its workers' error files (without one, torch makes one in /tmp for every launch and never removes it)."""
    head = ["--nproc-per-node", str(nproc_per_node), "--max-restarts", "0", "--log-dir", log_dir]
    if place is None:
        return ["--standalone", "--nnodes", "1", *head, "--module", JOB_MODULE, *argv]
    # the workers' store is the rank-0 agent's, at the address that agent advertises: its hostname's FQDN unless
    # told, which nodes sharing a hostname (or whose hostnames the others cannot resolve, as pods) do not reach
    local = ["--local-addr", place.address] if place.address else []
    return ["--nnodes", str(place.nodes), *head, "--rdzv-backend", "c10d", "--rdzv-endpoint", place.endpoint,
            "--rdzv-id", place.job_id, "--rdzv-conf", f"is_host={1 if place.is_first else 0}", *local,
            "--module", JOB_MODULE, *argv]
