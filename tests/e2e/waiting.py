"""Waiting on processes a test started: a condition polled until a deadline, and whether a pid still runs."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path


def wait_for(predicate: Callable[[], bool], timeout: float, every: float = 0.05) -> bool:
    """True as soon as predicate() is; False once `timeout` seconds passed without it."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(every)
    return False


def alive(pid: int) -> bool:
    """A process that exists and is no zombie (a killed child its parent has not reaped yet is gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.is_file() and "Z" not in stat.read_text().split(")")[1][:3]
