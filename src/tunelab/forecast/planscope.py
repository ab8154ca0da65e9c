"""A plan's scope on a CPU: the thread counts it prices together (one timing of a shape serves them all) and when it
started (what it timed under contention it keeps to its end). Context variables, set by the planner and
forecast/cpu_sharing.py, read by the timings (cpuspeed.py, loopcost.py)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

CONTENDED_KEEP_S = 600.0  # a timing taken under contention is reused this long, then timed again

_PRICED_TOGETHER: ContextVar[tuple[int, ...]] = ContextVar("threads_priced_together", default=())


@contextmanager
def priced_together(thread_counts: Iterable[int]) -> Iterator[None]:
    """The thread counts a plan is about to price (forecast/cpu_sharing.py's options): a timing that misses times
    the missing ones among them too, on the same model (one build, one start-up), as the loop's measuring job does
    (forecast/loopcost.py)."""
    token = _PRICED_TOGETHER.set(tuple(thread_counts))
    try:
        yield
    finally:
        _PRICED_TOGETHER.reset(token)


def priced_counts() -> tuple[int, ...]:
    return _PRICED_TOGETHER.get()


_PLAN_STARTED: ContextVar[float | None] = ContextVar("plan_started", default=None)


@contextmanager
def one_plan() -> Iterator[None]:
    """A plan's scope: what it timed under contention it keeps to its end, however long its timings took (on a
    loaded machine a plan's own timings outlasted CONTENDED_KEEP_S and it timed them again, minutes each)."""
    token = _PLAN_STARTED.set(time.time())
    try:
        yield
    finally:
        _PLAN_STARTED.reset(token)


def still_fresh(timed_at: float) -> bool:
    """A contended timing is reused for CONTENDED_KEEP_S, and by the plan that took it to its end."""
    started = _PLAN_STARTED.get()
    return time.time() - timed_at < CONTENDED_KEEP_S or (started is not None and timed_at >= started)
