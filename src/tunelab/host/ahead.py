"""Processes started ahead to import beside this one's own work (the local executor's warm process, a search's or a
sweep's), which a timing taken here must not share the cores with: each says when its imports end (a
`threading.Event`, set once ready or gone), and a timing first waits for every one (`settle`). The loop's measuring
job has its own (forecast/loopjob.py), which waits for these too."""

from __future__ import annotations

import threading
import time

_LOCK = threading.Lock()
_IMPORTING: list[threading.Event] = []


def importing(ready: threading.Event) -> None:
    """A process whose imports end when `ready` is set (set too where it is gone)."""
    with _LOCK:
        _IMPORTING.append(ready)


def settle(timeout_s: float) -> None:
    """Return once every process said `importing` is ready or gone, or after `timeout_s`."""
    end = time.monotonic() + timeout_s
    with _LOCK:
        waiting = list(_IMPORTING)
    for ready in waiting:
        ready.wait(max(0.0, end - time.monotonic()))
    with _LOCK:
        _IMPORTING[:] = [r for r in _IMPORTING if not r.is_set()]
