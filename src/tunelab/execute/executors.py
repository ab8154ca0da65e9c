"""The executors by name (what resources.executor, `--executor` and the ledger's jobs rows say), kept apart
from the interface (execute/executor.py) so that the interface imports none of its implementations."""

from __future__ import annotations

from tunelab.errors import TunelabError
from tunelab.execute.executor import ClusterFacts, Executor
from tunelab.execute.local_jobs import LocalExecutor
from tunelab.execute.ray_cluster import RayExecutor
from tunelab.execute.slurm_cli import SlurmExecutor

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


def cluster_facts(ex: Executor) -> ClusterFacts | None:
    """What the executor's cluster is made of, where it can say (ReadsCluster); None where it cannot."""
    read = getattr(ex, "cluster", None)
    return read() if callable(read) else None
