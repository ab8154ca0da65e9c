"""A run spanning nodes on Ray, the way srun spans a Slurm allocation: the Ray job's entrypoint is this module. It
reserves one bundle per node (a STRICT_SPREAD placement group: each on a different node, each with the CPUs and GPUs
one node of the run needs), then starts the run's own job process (`python -m tunelab.train.job run.yaml`) in each
bundle, told its node's rank, the first node's address and the rendezvous id (train/nodes.py reads them as it reads
srun's). From there the job is the same as on Slurm: torchrun on each node, a c10d rendezvous on the first, rank 0
alone writing run files, and tunelab's resume and checkpoint logic untouched.

A node lost under the run ends this job with a NODE_FAIL line in its log (the retry policy resumes the run from its
last checkpoint, execute/failures.py); a node's job process that fails ends the others and this job with its code.
`ray job stop` (tunelab cancel) stops the node tasks, whose job processes get SIGTERM (the trainer saves).

`python -m tunelab.execute.ray_span RUN_YAML NODES CPUS GPUS RDZV_ID`. Runs on a Ray node, where ray is installed
(imported here, not at tunelab's top: an optional extra)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tunelab.host.process import die_with_parent
from tunelab.host.spanning import JOB_MODULE, NODE_ADDRESS_ENV, SPAN_ENV

GLOO_IFNAME_ENV = "GLOO_SOCKET_IFNAME"
READY_TIMEOUT_S = 600.0  # the nodes the run needs, free at once (the executor queues runs its room cannot hold)


@dataclass(frozen=True)
class Span:
    run_yaml: Path
    nodes: int
    cpus: int
    gpus: int
    rdzv_id: str

    def bundle(self) -> dict[str, float]:
        return {"CPU": float(self.cpus), **({"GPU": float(self.gpus)} if self.gpus else {})}


def node_job(span: Span, rank: int, first_host: str) -> tuple[str, int]:
    """One node's job process, in its bundle: (this node's address, its exit status)."""
    import ray

    here = ray.util.get_node_ip_address()
    told = dict(zip(SPAN_ENV, (str(span.nodes), str(rank), first_host, span.rdzv_id), strict=True))
    env = {**os.environ, **told, NODE_ADDRESS_ENV: here}
    nic = interface_of(here)
    if nic and GLOO_IFNAME_ENV not in env:  # gloo's pairs on the address the nodes reach each other by
        env[GLOO_IFNAME_ENV] = nic
    proc = subprocess.run([sys.executable, "-m", JOB_MODULE, str(span.run_yaml)], env=env,
                          cwd=span.run_yaml.parent, check=False,
                          preexec_fn=lambda: die_with_parent(signal.SIGTERM))  # SIGTERM: the trainer saves
    return here, proc.returncode


def interface_of(address: str) -> str | None:
    """The network interface holding `address` (psutil: Ray's own dependency). Gloo otherwise picks the interface
    its hostname resolves to, which on a node with several (or nodes sharing a hostname) the other nodes may not
    reach: the run then hangs at its first collective."""
    try:
        import psutil  # Ray's own dependency (ray[default]), so on every Ray node
    except ImportError:
        return None
    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address == address for a in addrs):
            return name
    return None


def first_address() -> str:
    import ray

    return ray.util.get_node_ip_address()


def run_span(span: Span) -> int:
    """Reserve the nodes, start a job process on each, wait for all; the exit status is the job's."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy as InGroup

    ray.init(log_to_driver=True)  # the job's cluster (RAY_ADDRESS, set by Ray's job supervisor)
    group = placement_group([span.bundle()] * span.nodes, strategy="STRICT_SPREAD")
    print(f"[tunelab job] waiting for {span.nodes} nodes of {span.bundle()} each (placement group)", flush=True)
    ray.get(group.ready(), timeout=READY_TIMEOUT_S)
    at = [InGroup(group, placement_group_bundle_index=i) for i in range(span.nodes)]
    first = ray.get(ray.remote(first_address).options(num_cpus=0, scheduling_strategy=at[0]).remote())
    task = ray.remote(node_job)
    refs = {task.options(num_cpus=span.cpus, num_gpus=span.gpus, max_retries=0, scheduling_strategy=at[i])
            .remote(span, i, first): i for i in range(span.nodes)}
    print(f"[tunelab job] run spans {span.nodes} Ray nodes: c10d rendezvous {first}, id {span.rdzv_id}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: _stop(list(refs)))
    try:
        return _wait_all(refs)
    finally:
        remove_placement_group(group)


def _wait_all(refs: dict) -> int:  # noqa: ANN001 (Ray object refs)
    """Each node's exit as it comes; the first failure stops the others and is the job's."""
    import ray

    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        rank = refs[done[0]]
        try:
            address, code = ray.get(done[0])
        except (ray.exceptions.NodeDiedError, ray.exceptions.WorkerCrashedError,
                ray.exceptions.ActorDiedError) as exc:  # the node (or the worker holding its job) is gone
            print(f"[tunelab job] NODE_FAIL: node rank {rank} was lost under the run: {type(exc).__name__}",
                  flush=True)
            _stop(pending)
            return 1
        except ray.exceptions.TaskCancelledError:  # this job was stopped (SIGTERM: tunelab cancel)
            print(f"[tunelab job] stopped: node rank {rank}'s job process was sent SIGTERM", flush=True)
            _stop(pending)
            return 128 + signal.SIGTERM
        print(f"[tunelab job] node rank {rank} on {address} exited {code}", flush=True)
        if code != 0:
            _stop(pending)
            return code
    return 0


def _stop(refs: list) -> None:  # noqa: ANN001
    import ray

    for ref in refs:
        ray.cancel(ref, force=True)


def main(argv: list[str]) -> int:
    run_yaml, nodes, cpus, gpus, rdzv_id = argv
    return run_span(Span(Path(run_yaml).resolve(), int(nodes), int(cpus), int(gpus), rdzv_id))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
