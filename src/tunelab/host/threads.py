"""How many threads each process tunelab starts may run: the cores it was given (cores.py), shared by its processes.
torch starts a thread per core in every process, and two processes oversubscribing two cores ran orders of magnitude
slower (docs/training.md, "CPU threads").

A user's own OMP_NUM_THREADS wins and is said so, up to the CPUs its processes may run on: where the local executor
runs jobs side by side, each pinned to its share, a count set for the whole machine put two threads on one CPU and a
search's trials ran 19× slower (docs/training.md). tunelab marks the one it sets (`TUNELAB_OMP_NUM_THREADS`) so a child
can tell it from the user's. `TUNELAB_THREAD_RULE=torch` sets nothing (torch's own default)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

from tunelab.console import warn
from tunelab.host.cores import CPUS_ENV, Limit, cpu_list, share_cpus, usable_cores, usable_cpus

MARK_ENV = "TUNELAB_OMP_NUM_THREADS"  # OMP_NUM_THREADS as tunelab set it (equal: tunelab's, not the user's)
RULE_ENV = "TUNELAB_THREAD_RULE"  # "torch": set nothing (torch's default in each process, the old behaviour)
TORCH_DEFAULT = "torch"
OLD_BEHAVIOUR = f"torch's default ({RULE_ENV}={TORCH_DEFAULT})"  # the source of a plan that sets nothing
LIBRARY_ENVS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class ThreadPlan:
    """The threads of one process (`torch` None: torch's default), the cores its processes share, and the sources."""

    torch: int | None
    cores_given: int
    processes: int
    source: str
    explicit: bool = False  # the user's OMP_NUM_THREADS, or torch's default asked for: tunelab sets no count
    limit: Limit | None = None
    capped_from: int | None = None  # the user's OMP_NUM_THREADS where it asked more than the CPUs (`torch` is the cap)


def thread_budget(cores: int, processes: int) -> int:
    """Threads per process so that `processes` processes together run one per core (at least one each)."""
    return max(1, cores // max(1, processes))


def decide(processes: int = 1, env: Mapping[str, str] | None = None) -> ThreadPlan:
    """The threads of each of `processes` sharing this job's cores: the user's OMP_NUM_THREADS, torch's default under
    TUNELAB_THREAD_RULE=torch, else the budget."""
    env = os.environ if env is None else env
    cores = usable_cores(env, physical=True)
    processes = max(1, processes)
    if env.get(RULE_ENV, "").strip().lower() == TORCH_DEFAULT:
        return ThreadPlan(None, cores.count, processes, OLD_BEHAVIOUR, True, cores.limit)
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp and omp != env.get(MARK_ENV, "").strip():
        n = users_threads(env)  # None: a value torch cannot read either, left to torch as the user set it
        cpus = usable_cores(env)  # logical CPUs: a count above them is never the user's intent for this share
        if n is not None and n * processes > cpus.count:
            capped = thread_budget(cpus.count, processes)
            return ThreadPlan(capped, cores.count, processes, f"OMP_NUM_THREADS={omp}, set before tunelab, capped at "
                              f"{capped}: {processes} process(es) on {cpus.source} (more threads than CPUs wait for one "
                              "another at every barrier)", limit=cores.limit, capped_from=n)
        return ThreadPlan(n, cores.count, processes, f"OMP_NUM_THREADS={omp}, set before tunelab: respected", True,
                          cores.limit)
    return ThreadPlan(thread_budget(cores.count, processes), cores.count, processes,
                      f"{cores.source} / {processes} process(es)", limit=cores.limit)


def users_threads(env: Mapping[str, str] | None = None) -> int | None:
    """The user's own OMP_NUM_THREADS as a count; None where unset, not a count, or the one tunelab set."""
    env = os.environ if env is None else env
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if not omp.isdigit() or int(omp) < 1 or omp == env.get(MARK_ENV, "").strip():
        return None
    return int(omp)


def apply(plan: ThreadPlan, env: MutableMapping[str, str] | None = None) -> None:
    """Make `plan` this process's (and its children's through `env`): pinned to its share, OMP/MKL and torch threads
    set, tokenizers' parallelism off when processes share cores. A user's choice is left as it is, but for an
    MKL_NUM_THREADS above the plan's count: torch takes MKL's count for its own threads where both are set (its
    `at::init_num_threads`: OMP_NUM_THREADS=1 with MKL_NUM_THREADS=2 ran 2), so a larger one is capped at it."""
    env = os.environ if env is None else env
    if plan.source == OLD_BEHAVIOUR:
        return
    if env is os.environ:
        pin(env)
    if plan.processes > 1:
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if plan.torch is None:
        return
    mkl = env.get("MKL_NUM_THREADS", "").strip()
    if mkl.isdigit() and int(mkl) > plan.torch:
        env["MKL_NUM_THREADS"] = str(plan.torch)
    if not plan.explicit:
        for name in LIBRARY_ENVS:
            if name == "OMP_NUM_THREADS" or env.get(name) in (None, env.get(MARK_ENV)):
                env[name] = str(plan.torch)
        env[MARK_ENV] = str(plan.torch)
    if env is os.environ and "torch" in sys.modules:  # a job forked from a warm process: torch read its env then
        sys.modules["torch"].set_num_threads(plan.torch)


def pin(env: Mapping[str, str]) -> None:
    """Run this process on the cores the local executor gave its job, if any. A share it cannot take is said (it runs on
    its whole mask); a share that is no CPU list or names none of its CPUs is a TunelabError."""
    share = env.get(CPUS_ENV, "").strip()
    if not share:
        return
    cpus, mask = set(share_cpus(share)), usable_cpus()
    if cpus == set(mask):
        return
    try:
        os.sched_setaffinity(0, cpus)
    except (AttributeError, OSError) as exc:  # AttributeError: an OS without affinity (macOS)
        why = exc if isinstance(exc, OSError) else "this OS cannot pin a process"
        warn(f"could not pin this job to its cores {CPUS_ENV}={share} ({why}): it runs on CPUs {cpu_list(mask)}, "
             "which other jobs' shares overlap; its threads are still its share's")


def child_env(processes: int = 1, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a process tunelab starts, its threads set by the rule (the probe's steps)."""
    out = dict(os.environ if env is None else env)
    apply(decide(processes, out), out)
    return out
