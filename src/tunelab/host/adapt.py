"""A job's threads fitted to the cores others leave it as it starts.

Beside one CPU hog, a 2-thread calibration run took 3.3× its idle time (benchmarks/estimate_accuracy.py
--contend 1): its OpenMP threads meet at a barrier after every operation, so the thread sharing a core with the
hog sets the pace of both. One thread on the core left free runs near its idle speed. So a one-process job
measures the load on its cores over its own imports (its first seconds: nothing added to its time), and where
others held cores, torch gets threads for the cores left, at least one. A user's OMP_NUM_THREADS, torch's own
default and the ranks of a distributed job (each would count its sibling ranks' start as others) are left as
they are. The choice is recorded in summary.json's `threads` (`adapted_from`, `others_cores`).
"""

from __future__ import annotations

import os
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


_taken: Adaptation | None = None  # this process's adaptation, for its summary (one job a process)


def threads_left(planned: int, window: LoadWindow) -> int:
    """The threads for the cores others left: `planned` less the cores they held on average, rounded, at least 1."""
    held = window.others_cpu_s / window.wall_s if window.wall_s > 0 else 0.0
    return max(1, min(planned, round(planned - held)))


def fit_to_free_cores(plan: ThreadPlan, meter: LoadMeter | None) -> Adaptation | None:
    """Take fewer threads than `plan` where others held cores since `meter` started; None: the plan stands."""
    global _taken
    if meter is None or plan.explicit or plan.torch is None or plan.torch <= 1 or plan.processes > 1:
        return None
    window = meter.window()
    if window is None or window.wall_s < MIN_WINDOW_S:
        return None
    used = threads_left(plan.torch, window)
    if used >= plan.torch:
        return None
    import torch

    torch.set_num_threads(used)
    for name in (*LIBRARY_ENVS, MARK_ENV):  # its children (a tokenizer's pool, workers) alike, still tunelab's
        os.environ[name] = str(used)
    _taken = Adaptation(plan.torch, used, round(window.others_cpu_s / window.wall_s, 2), round(window.wall_s, 2))
    return _taken


def taken() -> Adaptation | None:
    """What fit_to_free_cores did in this process (None: nothing)."""
    return _taken
