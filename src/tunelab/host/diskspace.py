"""Free space and quota of the filesystem a path lives on: what plan sets a sweep's predicted disk use
against, and what a full-disk error reports. Imports no tunelab layer (a foundation helper)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

QUOTA_TIMEOUT_S = 5.0  # a quota server that does not answer must not hold up a plan


def existing_parent(path: str | Path) -> Path:
    """The path itself, or its nearest ancestor that exists (an experiment dir plan has not made yet)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def free_bytes(path: str | Path) -> int | None:
    """Bytes an unprivileged writer may still use on path's filesystem (None: it cannot be asked)."""
    try:
        return shutil.disk_usage(existing_parent(path)).free
    except OSError:
        return None


@dataclass(frozen=True)
class Quota:
    """The user's quota on a filesystem, as `quota` or `lfs quota` reported it (bytes)."""

    used: int
    limit: int
    source: str  # the command that answered

    @property
    def left(self) -> int:
        return max(0, self.limit - self.used)


def mount_point(path: str | Path) -> Path:
    """The mount point of the filesystem holding path."""
    p = existing_parent(path)
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p


def read_quota(path: str | Path) -> Quota | None:
    """The user's block quota on path's filesystem where `lfs quota` (Lustre) or `quota` answers and sets a
    limit; None otherwise (no command, no quota, no answer within QUOTA_TIMEOUT_S). Asked once per mount."""
    return _mount_quota(mount_point(path))


@lru_cache(maxsize=8)
def _mount_quota(mount: Path) -> Quota | None:
    user = str(os.getuid())
    if shutil.which("lfs"):
        quota = parse_quota(_ask(["lfs", "quota", "-q", "-u", user, str(mount)]), str(mount), "lfs quota")
        if quota is not None:
            return quota
    if shutil.which("quota"):
        return parse_quota(_ask(["quota", "-w", "-p", "-u", user]), str(mount), "quota", _device_of(mount))
    return None


def _ask(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=QUOTA_TIMEOUT_S).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _device_of(mount: Path) -> str | None:
    try:
        for line in Path("/proc/self/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 1 and fields[1] == str(mount):
                return fields[0]
    except OSError:
        pass
    return None


_ROW = re.compile(r"^\s*(\S+)\s+(\d+)\*?\s+(\d+)\s+(\d+)\b")


def parse_quota(text: str, mount: str, source: str, device: str | None = None) -> Quota | None:
    """The row of `lfs quota -q` / `quota -w -p` for this mount: used, soft and hard limit in KiB; the tightest non-zero
    is the limit. A long filesystem name alone on its line (lfs wraps it) is read with the next line."""
    lines = text.splitlines()
    for i, line in enumerate(lines[:-1]):
        if line.strip() in {mount, device}:
            lines[i + 1] = f"{line.strip()} {lines[i + 1]}"
    for line in lines:
        m = _ROW.match(line)
        if m is None or m.group(1) not in {mount, device}:
            continue
        used, soft, hard = (int(m.group(i)) for i in (2, 3, 4))
        limits = [x for x in (soft, hard) if x > 0]
        return Quota(used * 1024, min(limits) * 1024, source) if limits else None
    return None
