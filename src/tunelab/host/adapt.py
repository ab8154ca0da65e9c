"""A job's threads fitted to the cores others leave it as it starts. OpenMP threads meet at a barrier after every
operation, so a thread sharing a core with a hog sets the pace of all, while one thread on a free core runs near its
idle speed. So a one-process job measures the load on its cores over its own imports and, where others held cores, gives
torch threads for the cores left (at least one). A user's OMP_NUM_THREADS and distributed ranks are left as they are;
the choice goes to summary.json's `threads`."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from tunelab.host.cpuload import LoadMeter, LoadWindow
from tunelab.host.threads import LIBRARY_ENVS, MARK_ENV, ThreadPlan

MIN_WINDOW_S = 0.5  # a shorter look at the load (a job whose imports were cached) decides nothing


@dataclass(frozen=True)
class Adaptation:
    """The threads the rule planned, those the job took, and the cores others held meanwhile (on average)."""

    planned: int
    used: int
    others_cores: float
    window_s: float


# this process's adaptation, for its summary (one job a process; a forked job forgets its warm process's)
_taken: Adaptation | None = None


def threads_left(planned: int, window: LoadWindow) -> int:
    """The threads for the cores others left: `planned` less the cores they held on average, rounded, at least 1."""
    return max(1, min(planned, round(planned - window.others_cores)))


def adapted_to(planned: int, window: LoadWindow) -> Adaptation | None:
    """The job's and the plan's one rule: fewer threads than `planned` where others held cores (None: all of them)."""
    used = threads_left(planned, window)
    if used >= planned:
        return None
    return Adaptation(planned, used, round(window.others_cores, 2), round(window.wall_s, 2))


def adapts(plan: ThreadPlan) -> bool:
    """Whether a job of this thread plan fits its threads to the free cores: tunelab's own count of more than one
    thread in a one-process job (a user's count, torch's default and a distributed job's ranks are kept)."""
    return not plan.explicit and plan.torch is not None and plan.torch > 1 and plan.processes == 1


def fit_to_free_cores(plan: ThreadPlan, meter: LoadMeter | None) -> Adaptation | None:
    """Take fewer threads than `plan` where others held cores since `meter` started; None: the plan stands."""
    global _taken
    if meter is None or not adapts(plan) or plan.torch is None:
        return None
    window = meter.window()
    if window is None or window.wall_s < MIN_WINDOW_S:
        return None
    adapted = adapted_to(plan.torch, window)
    if adapted is None:
        return None
    import torch

    torch.set_num_threads(adapted.used)
    for name in (*LIBRARY_ENVS, MARK_ENV):  # its children (a tokenizer's pool, workers) alike, still tunelab's
        os.environ[name] = str(adapted.used)
    _taken = adapted
    return _taken


def forget() -> None:
    """A job forked from a warm process (train/warm.py) decides its own threads: the warm process's adaptation to the
    load while it imported is not the job's."""
    global _taken
    _taken = None


def taken() -> Adaptation | None:
    """What fit_to_free_cores did in this process (None: nothing)."""
    return _taken


# The plan prices a job at the threads the job will take: the same rule over the load while the plan is made. The
# window opens when planning starts (watch_load) and is read once per plan, at least MIN_WINDOW_S long.
WATCH_FRESH_S = 600.0  # a watch unused this long (a long-lived process: the MCP server) is opened again


@dataclass
class _Watch:
    meter: LoadMeter
    opened: float
    used: float  # when it was last read: a plan reads it again and again, never this far apart
    window: LoadWindow | None = None  # read once: every estimate of a plan at the same threads


_watch: _Watch | None = None


def watch_load() -> None:
    """Open the planning window now (a plan's start: its own work is its own tree, not others')."""
    global _watch
    meter = LoadMeter.start(threads=1, gpu=False)
    now = time.monotonic()
    _watch = _Watch(meter, now, now) if meter is not None else None


def _stale() -> bool:
    return _watch is None or time.monotonic() - _watch.used > WATCH_FRESH_S


def load_while_planning() -> LoadWindow | None:
    """Others' load on this process's cores since watch_load (opened now when stale or never), read once."""
    if _stale():
        watch_load()
    if _watch is None:
        return None
    _watch.used = time.monotonic()
    if _watch.window is None:
        left = MIN_WINDOW_S - (time.monotonic() - _watch.opened)
        if left > 0:
            time.sleep(left)
        _watch.window = _watch.meter.window()
    return _watch.window


def planning_window() -> LoadWindow | None:
    """The window this plan has read already (None: not read, or none lately): never opens or waits."""
    return None if _watch is None or _stale() else _watch.window


def planned_adaptation(plan: ThreadPlan) -> Adaptation | None:
    """What a job of this thread plan would take if it started under the load while planning (None: all of it)."""
    if not adapts(plan) or plan.torch is None:
        return None
    window = load_while_planning()
    if window is None or window.wall_s <= 0:
        return None
    return adapted_to(plan.torch, window)
