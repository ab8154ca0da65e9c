"""Which machine a cached timing was taken on: its name, its CPU's model and its CPU count.

Why: timings were cached under the hostname and CPU count alone, and this project's VM kept both ("vm", 2) while it
moved from an AMD EPYC to an Intel Xeon, on which MKL's float32 products beat oneDNN's where on the EPYC they ran at
less than half its speed (docs/benchmarks.md): a kernel choice, a step's time, the loop's cost or a job's imports
timed on one CPU would have priced the other. The CPU's model is what changes then."""

from __future__ import annotations

import os
import platform
import socket
from functools import lru_cache
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


@lru_cache(maxsize=1)
def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's model as the OS names it (Linux: /proc/cpuinfo's first `model name`), else the platform's words,
    else "unknown"."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_key() -> list[str | int | None]:
    """The start of every cache key for a timing of this machine: host name, CPU model, CPU count."""
    return [socket.gethostname(), cpu_model(), os.cpu_count()]


def this_cpu(recorded: str | None) -> bool:
    """A speed recorded on a CPU of this model, or by a row that recorded none (unknown is not different): the one
    rule by which training, start-up and generation rows are kept for a CPU plan."""
    return recorded in (None, cpu_model())
