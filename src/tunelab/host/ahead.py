"""Processes started ahead to import beside this one's own work (the local executor's warm process, a search's or a
sweep's), which a timing taken here must not share the cores with: each says when its imports end (a
`threading.Event`, set once ready or gone), and a timing first waits for every one (`settle`). The loop's measuring
job has its own (forecast/loopjob.py), which waits for these too.

A warm process also offers itself as a `Forker`: the plan's own measuring job is then forked from it rather than
started as one more interpreter importing the same stack (on two cores, a cold search's plan ran three such imports
at once: its own, the warm process's and the measuring job's)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Protocol

_LOCK = threading.Lock()
_IMPORTING: list[threading.Event] = []
_FORKERS: list[Forker] = []


class Forker(Protocol):
    """A process that imported the training stack and runs one of its modules' jobs forked from it."""

    @property
    def imports_s(self) -> float | None:
        """What its imports took (a fresh job's start-up before it loads anything); None until known."""

    def run_module(self, module: str, argv: list[str], log: Path, environ: dict[str, str],
                   timeout_s: float) -> int | None:
        """`python -m module *argv` forked with exactly `environ`, its output to `log`; its exit status, or None
        where it could not run it (or it ran past `timeout_s`, then stopped): the caller starts one of its own."""


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


def offer(forker: Forker) -> None:
    """A process this one may fork jobs from until it is withdrawn."""
    with _LOCK:
        _FORKERS.append(forker)


def withdraw(forker: Forker) -> None:
    with _LOCK:
        if forker in _FORKERS:
            _FORKERS.remove(forker)


def forker() -> Forker | None:
    """The process offered last and not withdrawn; None where there is none."""
    with _LOCK:
        return _FORKERS[-1] if _FORKERS else None
