"""Is a process on this host still there? One rule for claims, run states and killed builders: a pid that does not
exist, is a zombie or is now another process (its start time differs) is gone; one we may not signal is alive."""

from __future__ import annotations

import os
from pathlib import Path


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (Linux), None when unreadable."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    fields = _stat_fields(pid)
    return fields[19] if fields and len(fields) > 19 else None


def alive(pid: int, start: str | None = None) -> bool:
    """Is process `pid` alive (and, given its recorded `start`, still the same process)?"""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: alive
    fields = _stat_fields(pid)
    if fields and fields[0] == "Z":
        return False
    now = fields[19] if fields and len(fields) > 19 else None
    return not (start and now and now != start)


def signal_group(pgid: int, sig: int) -> None:
    """Send `sig` to process group `pgid` (a job's session: its leader's pid); one already gone, or not ours to
    signal, is left as it is."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def die_with_parent(sig: int) -> bool:
    """Have the kernel send this process `sig` when its parent dies (Linux PR_SET_PDEATHSIG); False where it cannot
    (not Linux). Processes started in sessions of their own are otherwise left running by a killed parent."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(sig))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return False
    return True
