"""This machine's RAM, the one figure a CPU run's memory is set against (validate's check, the runs a CPU
holds side by side)."""

from __future__ import annotations

import os


def host_memory_gib() -> float:
    """This machine's RAM, GiB. OSError where the OS does not say, naming why (never 0: a check against nothing)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError) as exc:
        raise OSError(f"os.sysconf could not read it: {exc}") from exc
