"""How many threads each process tunelab starts may run: the cores it was given, shared by its processes.

Why: torch (and OpenMP, MKL) start one compute thread per core in every process. Two processes doing so on
two cores spin four threads on two cores, and a loop of small matrix products then ran 146x slower in each
(docs/training.md, "CPU threads"). So every process tunelab starts — a job, its torchrun ranks, the probe's
steps, a local job beside another — runs `thread_budget(cores, processes)` threads, where `cores` is what it
was given: the local executor's share (`TUNELAB_CPUS`, which the job pins itself to), else Slurm's
allocation (SLURM_CPUS_PER_TASK), else this process's affinity mask.

A user's own OMP_NUM_THREADS wins and is said so. tunelab marks the OMP_NUM_THREADS it sets itself
(`TUNELAB_OMP_NUM_THREADS` holds the same value), so a child tells tunelab's choice, which it may divide
again among its own processes, from the user's. `TUNELAB_THREAD_RULE=torch` sets nothing: torch's own
default in each process, the old behaviour (benchmarks/threads.py measures both).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

CPUS_ENV = "TUNELAB_CPUS"  # the cores a job was given by the local executor: "0,1" (it pins itself to them)
MARK_ENV = "TUNELAB_OMP_NUM_THREADS"  # OMP_NUM_THREADS as tunelab set it (equal: tunelab's, not the user's)
RULE_ENV = "TUNELAB_THREAD_RULE"  # "torch": set nothing (torch's default in each process, the old behaviour)
TORCH_DEFAULT = "torch"
OLD_BEHAVIOUR = f"torch's default ({RULE_ENV}={TORCH_DEFAULT})"  # the source of a plan that sets nothing
LIBRARY_ENVS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class ThreadPlan:
    """The threads of one process: `torch` (None: torch's own default), the cores its processes share, how many
    processes share them, and where the figures came from."""

    torch: int | None
    cores_given: int
    processes: int
    source: str
    explicit: bool = False  # the user's OMP_NUM_THREADS, or torch's default asked for: tunelab sets no count


def thread_budget(cores: int, processes: int) -> int:
    """Threads per process so that `processes` processes together run one per core (at least one each)."""
    return max(1, cores // max(1, processes))


def parse_cpus(text: str) -> list[int]:
    """'0,2-3' -> [0, 2, 3] (the form of TUNELAB_CPUS and of Linux's cpu lists)."""
    out: list[int] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def usable_cpus() -> list[int]:
    """The cores this process may run on (its affinity mask; every core where there is none)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return list(range(os.cpu_count() or 1))


def physical_cores(cpus: list[int]) -> int:
    """How many physical cores `cpus` (logical CPUs) sit on: two hyperthreads of a core are one compute thread's
    worth to torch, whose own default is the physical cores. len(cpus) where Linux's topology is unreadable."""
    seen = set()
    for cpu in cpus:
        top = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            seen.add((top.joinpath("physical_package_id").read_text().strip(), top.joinpath("core_id").read_text().strip()))
        except OSError:
            return len(cpus)
    return len(seen) or len(cpus)


def cores_given(env: Mapping[str, str] | None = None, physical: bool = False) -> tuple[int, str]:
    """The CPUs this job may use and why: the local executor's share, Slurm's allocation, the affinity mask.
    `physical`: a mask's physical cores rather than its logical CPUs (compute threads; Slurm's count is kept)."""
    env = os.environ if env is None else env
    share = env.get(CPUS_ENV, "").strip()
    cpus: list[int] = []
    if share:
        try:
            cpus = parse_cpus(share)
        except ValueError:
            cpus = []
    where = f"{CPUS_ENV}={share} (the local executor's share)" if cpus else ""
    raw = env.get("SLURM_CPUS_PER_TASK", "").strip()
    if not cpus and raw.isdigit() and int(raw) > 0:
        return int(raw), f"SLURM_CPUS_PER_TASK={raw}"
    if not cpus:
        cpus = usable_cpus()
        where = f"cpu affinity {len(cpus)}"
    n = physical_cores(cpus) if physical else len(cpus)
    return n, where + (f" ({n} physical cores)" if n != len(cpus) else "")


def decide(processes: int = 1, env: Mapping[str, str] | None = None) -> ThreadPlan:
    """The threads of each of `processes` processes sharing this job's cores: the user's OMP_NUM_THREADS when
    they set one, torch's default under TUNELAB_THREAD_RULE=torch, else the budget."""
    env = os.environ if env is None else env
    cores, source = cores_given(env, physical=True)
    processes = max(1, processes)
    if env.get(RULE_ENV, "").strip().lower() == TORCH_DEFAULT:
        return ThreadPlan(None, cores, processes, OLD_BEHAVIOUR, True)
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp and omp != env.get(MARK_ENV, "").strip():
        n = int(omp) if omp.isdigit() and int(omp) > 0 else None
        return ThreadPlan(n, cores, processes, f"OMP_NUM_THREADS={omp}, set before tunelab: respected", True)
    return ThreadPlan(thread_budget(cores, processes), cores, processes, f"{source} / {processes} process(es)")


def apply(plan: ThreadPlan, env: MutableMapping[str, str] | None = None) -> None:
    """Make `plan` this process's (and, through `env`, its children's): pinned to the local executor's share,
    OMP/MKL threads set and marked as tunelab's, torch's threads if torch is loaded, tokenizers' own
    parallelism off when several processes share the cores. A user's choice is left as it is."""
    env = os.environ if env is None else env
    if plan.source == OLD_BEHAVIOUR:
        return
    if env is os.environ:
        pin(env)
    if plan.processes > 1:
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if plan.explicit or plan.torch is None:
        return
    for name in LIBRARY_ENVS:
        if name == "OMP_NUM_THREADS" or env.get(name) in (None, env.get(MARK_ENV)):
            env[name] = str(plan.torch)
    env[MARK_ENV] = str(plan.torch)
    if env is os.environ and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(plan.torch)


def pin(env: Mapping[str, str]) -> None:
    """Run this process (and what it starts) on the cores the local executor gave its job, if it gave some."""
    share = env.get(CPUS_ENV, "").strip()
    if not share or not hasattr(os, "sched_setaffinity"):
        return
    try:
        cpus = set(parse_cpus(share)) & set(usable_cpus())
        if cpus and cpus != set(usable_cpus()):
            os.sched_setaffinity(0, cpus)
    except (ValueError, OSError):  # a share this process may not take: it keeps its mask
        pass


def child_env(processes: int = 1, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a process tunelab starts, its threads set by the rule (the probe's steps)."""
    out = dict(os.environ if env is None else env)
    apply(decide(processes, out), out)
    return out


def split_cores(cpus: list[int], parts: int) -> list[list[int]]:
    """`cpus` in `parts` contiguous shares as even as can be (the first ones a core more), none empty."""
    parts = max(1, min(parts, len(cpus)))
    size, extra = divmod(len(cpus), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(cpus[start:end])
        start = end
    return out


def cpu_list(cpus: list[int]) -> str:
    """[0, 1, 3] -> '0,1,3' (TUNELAB_CPUS)."""
    return ",".join(str(c) for c in cpus)
