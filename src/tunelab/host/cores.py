"""How many cores this process may use, the one owner of that count (threads, dataloader workers, local shares).

The affinity mask alone is not it: a cgroup may grant 2 CPUs' time on a 16-CPU mask, and torch's 16 threads would be
throttled every period. So the smallest of four limits wins and is named: the local executor's share (`TUNELAB_CPUS`)
within the mask, else the mask; the cgroup quota (at least 1); Slurm's allocation; and, for compute threads, physical
cores (SMT siblings are one core's worth to torch). Jobs side by side get shares cut along physical cores
(`job_shares`)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.host.cgroup import PROC_SELF, cpu_quota

CPUS_ENV = "TUNELAB_CPUS"  # the cores a job was given by the local executor: "0,1" (it pins itself to them)
SLURM_ENVS = ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE")  # the first one set is Slurm's allocation
# the CPUs a Ray job asked for (execute/ray_jobs.py job_env): Ray places a job by them but pins it to no core, so
# without this count its processes would take every core of the node, beside the node's other jobs
RAY_CPUS_ENV = "TUNELAB_RAY_CPUS"
SYSFS_CPU = Path("/sys/devices/system/cpu")  # cpuN/topology/thread_siblings_list


class Limit(StrEnum):
    """Which limit set the count (summary.json's `threads.limit`)."""

    SHARE = "share"  # the local executor's share of the cores
    SLURM = "slurm"
    RAY = "ray"  # a Ray job's CPUs (RAY_CPUS_ENV)
    CGROUP = "cgroup"  # a CPU quota
    AFFINITY = "affinity"  # the affinity mask (every core where the OS has none)


@dataclass(frozen=True)
class Cores:
    """How many cores the process may use, which limit set that, and in words where it was read."""

    count: int
    limit: Limit
    source: str


def parse_cpus(text: str) -> list[int]:
    """'0,2-3' -> [0, 2, 3] (the form of TUNELAB_CPUS and of Linux's cpu lists)."""
    out: list[int] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def cpu_list(cpus: list[int]) -> str:
    """[0, 1, 3] -> '0,1,3' (TUNELAB_CPUS)."""
    return ",".join(str(c) for c in cpus)


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask; every CPU where the OS has none)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux: no mask to read
        return list(range(os.cpu_count() or 1))


def share_cpus(share: str) -> list[int]:
    """The CPUs of the local executor's share `share` this process may run on; TunelabError for a share that is
    not a CPU list or names none of them (a job given such a share would run on others' cores)."""
    try:
        given = parse_cpus(share)
    except ValueError:
        raise TunelabError(f"{share!r} is not a list of CPUs like 0,2-3 (the local executor sets it; unset it to "
                           "use every core)", field=CPUS_ENV) from None
    mask = usable_cpus()
    cpus = sorted(set(given) & set(mask))
    if not cpus:
        raise TunelabError(f"{share} names none of the CPUs this process may run on ({cpu_list(mask)})", field=CPUS_ENV)
    return cpus


def allocated_cpus(env: Mapping[str, str], name: str, limit: Limit, said: str = "") -> Cores | None:
    """The CPUs a scheduler's variable `name` gives this process (None: unset, or not a positive count)."""
    raw = env.get(name, "").strip()
    if raw.isdigit() and int(raw) > 0:
        return Cores(int(raw), limit, f"{name}={raw}{said}")
    return None


def slurm_cpus(env: Mapping[str, str]) -> Cores | None:
    """Slurm's allocation of CPUs to this task, named by the variable it came from (None: not under Slurm)."""
    return next((c for name in SLURM_ENVS if (c := allocated_cpus(env, name, Limit.SLURM))), None)


def ray_cpus(env: Mapping[str, str]) -> Cores | None:
    """The CPUs the Ray job this process runs in asked for (None: not in a tunelab Ray job)."""
    return allocated_cpus(env, RAY_CPUS_ENV, Limit.RAY, " (the Ray job's CPUs)")


def usable_cores(env: Mapping[str, str] | None = None, physical: bool = False, sysfs: Path = SYSFS_CPU,
                 proc: Path = PROC_SELF) -> Cores:
    """How many cores this process (or a child given `env`) may use: the smallest of its CPUs (the executor's share
    within the mask, else the mask; `physical`: in physical cores), its cgroup's CPU quota, Slurm's allocation and a
    Ray job's CPUs."""
    env = os.environ if env is None else env
    share = env.get(CPUS_ENV, "").strip()
    cpus = share_cpus(share) if share else usable_cpus()
    n = physical_cores(cpus, sysfs) if physical else len(cpus)
    where = f"{CPUS_ENV}={share} (the local executor's share)" if share else f"cpu affinity {len(cpus)}"
    mask = Cores(n, Limit.SHARE if share else Limit.AFFINITY, where + (f" ({n} physical cores)" if n != len(cpus) else ""))
    quota = cpu_quota(proc)
    others = [slurm_cpus(env), ray_cpus(env),
              Cores(max(1, math.floor(quota.cpus)), Limit.CGROUP, quota.describe()) if quota else None]
    candidates = [c for c in ([mask] if share else []) + others + ([] if share else [mask]) if c is not None]
    return min(candidates, key=lambda c: c.count)  # the first of the smallest: share, Slurm, Ray, cgroup, mask


def sibling_groups(cpus: list[int], sysfs: Path = SYSFS_CPU) -> list[list[int]]:
    """`cpus` grouped by physical core (SMT siblings), in order of first CPU; unreadable topology: a core each."""
    wanted, seen, groups = set(cpus), set(), []
    for cpu in sorted(wanted):
        if cpu in seen:
            continue
        try:
            siblings = set(parse_cpus((sysfs / f"cpu{cpu}" / "topology" / "thread_siblings_list").read_text()))
        except (OSError, ValueError):
            siblings = set()
        group = sorted((siblings | {cpu}) & wanted)
        seen.update(group)
        groups.append(group)
    return groups


def physical_cores(cpus: list[int], sysfs: Path = SYSFS_CPU) -> int:
    """How many physical cores `cpus` (logical CPUs) sit on."""
    return len(sibling_groups(cpus, sysfs))


def split_cores(cpus: list[int], parts: int, sysfs: Path = SYSFS_CPU) -> list[list[int]]:
    """`cpus` in `parts` shares as even as can be, none empty, cut along physical cores so SMT siblings stay together
    (split only when there are more parts than cores)."""
    groups = sibling_groups(cpus, sysfs)
    if len(groups) < min(parts, len(cpus)):
        groups = [[cpu] for group in groups for cpu in group]
    parts = max(1, min(parts, len(groups)))
    size, extra = divmod(len(groups), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(sorted(cpu for group in groups[start:end] for cpu in group))
        start = end
    return out


def job_shares(parts: int, env: Mapping[str, str] | None = None, sysfs: Path = SYSFS_CPU,
               proc: Path = PROC_SELF) -> list[list[int]]:
    """The CPUs of `parts` jobs side by side, within what this process may use, cut along physical cores."""
    cpus = usable_cpus()
    allowed = usable_cores(env, sysfs=sysfs, proc=proc).count
    if allowed < len(cpus):
        groups = sibling_groups(cpus, sysfs)
        spread = [g[i] for i in range(max(len(g) for g in groups)) for g in groups if i < len(g)]
        cpus = sorted(spread[:allowed])
    return split_cores(cpus, parts, sysfs)
