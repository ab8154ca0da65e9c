"""A real Slurm cluster for tests marked `slurm`, started once per session with scripts/slurm-dev-cluster (which
installs the Debian packages when missing; `make test` installs them before pytest), by the first xdist worker
that needs it and shared by the others (tests/slurmcluster.py). A cluster that already answers is used as it is
and left running; one started here is stopped at the session's end (the script stops only the daemons,
namespaces and links it started).

The cluster started here has NODES=2: the host's node alone in the default partition `debug`, where the tests
that need one node run as before, and two more nodes, each a slurmd in a network namespace of its own, in
partition `multinode` (`slurm_nodes`), for runs that span nodes."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

import pytest
import slurmcluster

PARTITION = "multinode"  # the script's partition of namespace nodes
NODES = slurmcluster.NODES
USABLE = ("idle", "mixed", "allocated", "completing")
_script = slurmcluster.script


def partition_nodes(partition: str = PARTITION) -> list[str]:
    """The nodes of a partition that can run jobs, as Slurm lists them."""
    out = subprocess.run(["sinfo", "-h", "-N", "-p", partition, "-o", "%N %T"], capture_output=True, text=True)
    return sorted({line.split()[0] for line in out.stdout.splitlines()
                   if len(line.split()) == 2 and line.split()[1].rstrip("*~#") in USABLE})


@pytest.fixture(scope="session")
def slurm_cluster():
    """The session's cluster: found answering, or started by the first worker that needs it (slurmcluster.py);
    stopped at the session's end if this session started it."""
    try:
        return slurmcluster.ensure_started()
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module", autouse=True)
def slurm_module_use(request):
    """The cluster shared while this module runs, or held alone by a module marked `slurm_alone` (it restarts or
    pauses the daemons, or preempts the host's node, which every other module's jobs run on)."""
    with slurmcluster.cluster_use(alone=request.node.get_closest_marker("slurm_alone") is not None):
        yield


@dataclass(frozen=True)
class NamespaceNodes:
    """The nodes of partition `multinode`: names as Slurm knows them (and as each node's hostname says), and the
    script's ways to lose one as a power cut would and to bring it back."""

    names: tuple[str, ...]
    partition: str = PARTITION

    def fail(self, node: str) -> None:
        with slurmcluster.cluster_lock():
            proc = _script("fail-node", node, timeout=120)
        assert proc.returncode == 0, f"fail-node {node}:\n{proc.stdout}\n{proc.stderr}"

    def restore(self) -> None:
        """`start` again (idempotent): the lost node's slurmd restarts in its namespace and the node returns."""
        with slurmcluster.cluster_lock():
            proc = _script("start", timeout=300)
        assert proc.returncode == 0, f"start:\n{proc.stdout}\n{proc.stderr}"
        assert len(partition_nodes(self.partition)) == len(self.names), proc.stdout


@pytest.fixture(scope="session")
def slurm_nodes(slurm_cluster) -> NamespaceNodes:
    """Two namespace nodes: those of a cluster started here, or added to one found running (the script is
    idempotent; they stay, in a partition of their own) when this is root."""
    names = partition_nodes()
    if len(names) < NODES:
        if os.geteuid() != 0:
            pytest.skip(f"the running cluster has no partition {PARTITION} of {NODES} nodes, and adding one "
                        "(scripts/slurm-dev-cluster with NODES=2) needs root")
        with slurmcluster.cluster_lock():
            proc = _script("start")
        assert proc.returncode == 0, f"NODES={NODES} scripts/slurm-dev-cluster start:\n{proc.stdout}\n{proc.stderr}"
        names = partition_nodes()
    assert len(names) == NODES, names
    return NamespaceNodes(tuple(names))


@dataclass(frozen=True)
class ClusterAdmin:
    """What a cluster's admins do to the daemons under a running sweep, through the script (which touches only the
    daemons it started): slurmctld stopped and started again from its saved state (maintenance), slurmctld hung
    (SIGSTOP: clients time out, unsure what it did), slurmdbd stopped and started (sacct fails meanwhile)."""

    def _do(self, *args: str) -> None:
        with slurmcluster.cluster_lock():
            proc = _script(*args, timeout=120)
        assert proc.returncode == 0, f"{args}:\n{proc.stdout}\n{proc.stderr}"

    def restart_ctld(self, pause_s: float = 0) -> None:
        self._do("restart-ctld", str(pause_s))

    def pause_ctld(self) -> None:
        self._do("pause-ctld")

    def resume_ctld(self) -> None:
        self._do("resume-ctld")

    def stop_dbd(self) -> None:
        self._do("stop-dbd")

    def start_dbd(self) -> None:
        self._do("start-dbd")


@pytest.fixture(scope="session")
def slurm_admin(slurm_cluster) -> ClusterAdmin:
    """The daemons' faults; needs a cluster this script started (its pid files), as the one started here is."""
    if os.geteuid() != 0 or _script("status").stdout.find("slurmctld: running") < 0:
        pytest.skip("restarting Slurm's daemons needs root and a cluster started by scripts/slurm-dev-cluster")
    return ClusterAdmin()
