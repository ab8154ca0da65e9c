"""The executors by name (what resources.executor, `--executor` and the ledger's jobs rows say), kept apart
from the interface (execute/executor.py) so that the interface imports none of its implementations."""

from __future__ import annotations

import os
import time
from typing import cast

from tunelab.errors import TunelabError
from tunelab.execute.executor import ClusterRead, Executor, NodeAsk, ReadsCluster
from tunelab.execute.local_jobs import LocalExecutor
from tunelab.execute.ray_cluster import ADDRESS_ENV, RayExecutor
from tunelab.execute.slurm_cli import SlurmExecutor
from tunelab.rundir.config import RunConfig
from tunelab.spec import ResourcesSpec

CLUSTER_TIMEOUT_S = 5.0  # a cluster that does not answer within it is planned from the spec alone
CLUSTER_TTL_S = 60.0  # a read kept this long: one plan, validate or status look reads the cluster once
_read: dict[tuple[str, str], tuple[float, ClusterRead]] = {}  # (executor, address) -> (when, what was read)

EXECUTORS: dict[str, type[Executor]] = {LocalExecutor.name: LocalExecutor, SlurmExecutor.name: SlurmExecutor,
                                        RayExecutor.name: RayExecutor}


def executor_class(name: str) -> type[Executor]:
    """The class of the executor named `name` (its facts, e.g. `detached`, without starting it)."""
    try:
        return EXECUTORS[name]
    except KeyError:
        raise TunelabError(f"unknown executor {name!r}: use {' or '.join(repr(n) for n in EXECUTORS)}",
                           field="--executor") from None


def executor_named(name: str) -> Executor:
    """A new executor of that name (Slurm: its commands must be on PATH)."""
    return executor_class(name)()


def check_options(ex: Executor, dry_run: bool, wait: bool) -> None:
    """--dry-run and --wait mean something only where jobs outlive this process."""
    if not ex.detached and (dry_run or wait):
        schedulers = " or ".join(n for n, cls in EXECUTORS.items() if cls.detached)
        raise TunelabError(f"--dry-run and --wait apply to the {schedulers} executor only (a {ex.name} run trains "
                           "here and returns when it has ended)", field="--dry-run" if dry_run else "--wait")


def _reader(name: str) -> type[ReadsCluster] | None:
    """The executor of that name where it reads its cluster (ReadsCluster): plan places runs on its nodes."""
    cls = executor_class(name)
    return cast("type[ReadsCluster]", cls) if callable(getattr(cls, "read_cluster", None)) else None


def cluster_facts(resources: ResourcesSpec) -> ClusterRead | None:
    """What the cluster `resources` name is made of, read within CLUSTER_TIMEOUT_S and kept CLUSTER_TTL_S (plan,
    validate and status's re-plan ask it several times); a cluster that did not answer, its problem. None: the
    executor reads no cluster (local, Slurm)."""
    reader = _reader(resources.executor)
    if reader is None:
        return None
    key = (resources.executor, resources.address or os.environ.get(ADDRESS_ENV, ""))
    kept = _read.get(key)
    if kept is not None and time.monotonic() - kept[0] < CLUSTER_TTL_S:
        return kept[1]
    try:
        read = ClusterRead(reader.read_cluster(resources, CLUSTER_TIMEOUT_S), address=key[1])
    except TunelabError as exc:
        read = ClusterRead(None, exc.message, key[1])
    _read[key] = (time.monotonic(), read)
    return read


def node_ask(cfg: RunConfig) -> NodeAsk | None:
    """What a run's first job asks of one node, where its executor reads a cluster (None elsewhere)."""
    reader = _reader(cfg.resources.executor)
    return reader.node_ask(cfg) if reader is not None else None
