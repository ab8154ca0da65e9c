"""A plan made while others hold cores prices the slowdown its runs will suffer, measured where it can be: the median
slowdown of earlier runs under a like load (ledger/slowdown.py), else the load's share of the cores (a lower bound); the
source says which. A speed from rows timed under load already holds it and is left as it is."""

from __future__ import annotations

from dataclasses import replace
from statistics import median

from tunelab.host.adapt import planning_window
from tunelab.ledger.history import HistoryRun
from tunelab.ledger.slowdown import loaded

MIN_HELD_CORES = 0.5  # others holding less than this while planning: the plan prices as if idle
LIKE_SHARE = 0.2  # a run measured with others' share of the cores within this of now's was under a like load


def load_factor(rows: list[HistoryRun], history: list[HistoryRun], threads: int | None) -> tuple[float, str]:
    """(factor ≥ 1 the run's time is multiplied by, the source's words); (1, "") when the plan is not under load."""
    window = planning_window()
    if window is None or window.wall_s <= 0 or window.others_cores < MIN_HELD_CORES:
        return 1.0, ""
    if rows and all(loaded(r) for r in rows):
        return 1.0, ""
    held = f"others held {window.others_cores:.1f} of {window.cores} cores while planning"
    like = [r.measured_slowdown for r in history if r.measured_slowdown and r.others_share is not None
            and abs(r.others_share - window.others_share) <= LIKE_SHARE]
    if like:
        factor = max(1.0, median(like))
        return factor, f"×{factor:.2f} for the load now ({held}): measured on {len(like)} run(s) under a like load"
    modelled = replace(window, threads=threads or 1).slowdown  # the job's threads on the cores others left
    return modelled, (f"×{modelled:.2f} for the load now ({held}): modelled from its share of the cores, a lower "
                      "bound — no run here was measured under a like load yet")
