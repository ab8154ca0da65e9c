"""This process's cgroup CPU quota, read from its own cgroup files: the smallest over its cgroup and ancestors up to the
mount (v2 `cpu.max`, v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`), found through /proc/self/cgroup and mountinfo (a
container's mount shows its own cgroup as root). No such files: no quota."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path


def host_memory_gib() -> float:
    """This machine's RAM, GiB. OSError where the OS does not say, naming why (never 0: a check against nothing)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError) as exc:
        raise OSError(f"os.sysconf could not read it: {exc}") from exc


PROC_SELF = Path("/proc/self")


@dataclass(frozen=True)
class Quota:
    """A CPU quota: `cpus` CPUs' worth of time each period, and the file that set it as it reads."""

    cpus: float
    file: Path
    text: str

    def describe(self) -> str:
        return f"cgroup quota {self.cpus:g} CPUs ({self.file}: {self.text})"


def cpu_quota(proc: Path = PROC_SELF) -> Quota | None:
    """The smallest CPU quota over this process's cgroups and their ancestors (None: none, or not Linux)."""
    quotas = [q for d in cgroup_dirs(proc) if (q := read_quota(d)) is not None]
    return min(quotas, key=lambda q: q.cpus, default=None)


def cgroup_dirs(proc: Path = PROC_SELF) -> list[Path]:
    """The directories of this process's cpu cgroups (v2, v1) and of their ancestors up to each mount, leaf first."""
    try:
        memberships = (proc / "cgroup").read_text().splitlines()
        mounts = _cpu_mounts((proc / "mountinfo").read_text().splitlines())
    except OSError:  # not Linux
        return []
    dirs: list[Path] = []
    for line in memberships:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        kind = "v2" if hierarchy == "0" and not controllers else "v1" if "cpu" in controllers.split(",") else None
        if kind not in mounts:
            continue
        root, mount = mounts[kind]
        if root == "/":
            rel = path
        elif path == root or path.startswith(root + "/"):
            rel = path[len(root):]
        else:  # a path outside what the mount shows: the mount is this process's cgroup (a container's view)
            rel = "/"
        leaf = mount / rel.lstrip("/")
        dirs += [leaf, *(p for p in leaf.parents if p.is_relative_to(mount))]
    return dirs


def _cpu_mounts(lines: list[str]) -> dict[str, tuple[str, Path]]:
    """{'v2' | 'v1': (the cgroup path the mount shows as root, its mount point)} of the cpu controller's mounts."""
    out: dict[str, tuple[str, Path]] = {}
    for line in lines:
        head, _, tail = line.partition(" - ")
        fields, kinds = head.split(), tail.split()
        if len(fields) < 5 or len(kinds) < 3:
            continue
        root, point = _unescape(fields[3]), Path(_unescape(fields[4]))
        if kinds[0] == "cgroup2":
            out.setdefault("v2", (root, point))
        elif kinds[0] == "cgroup" and "cpu" in kinds[2].split(","):
            out.setdefault("v1", (root, point))
    return out


def _unescape(text: str) -> str:
    """mountinfo writes a space as \\040 (octal escapes for space, tab, newline, backslash)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), text)


def read_quota(directory: Path) -> Quota | None:
    """The CPU quota one cgroup directory sets (None: none there)."""
    v2 = directory / "cpu.max"
    try:
        text = v2.read_text().strip()
    except OSError:
        return _read_v1(directory)
    quota, _, period = text.partition(" ")
    if quota == "max" or not period:
        return None
    return Quota(int(quota) / int(period), v2, text)


def _read_v1(directory: Path) -> Quota | None:
    quota_file, period_file = directory / "cpu.cfs_quota_us", directory / "cpu.cfs_period_us"
    try:
        quota, period = int(quota_file.read_text()), int(period_file.read_text())
    except OSError:
        return None
    if quota <= 0 or period <= 0:  # -1: no quota
        return None
    return Quota(quota / period, quota_file, f"{quota} / {period_file.name} {period}")
