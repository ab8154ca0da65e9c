"""A plan's timed training steps in rounds (forecast/cpuspeed.py): a round is steps until MIN_STEPS and
TIME_BUDGET_S (fewer where a step takes seconds), with the machine's load over them; a round whose steps disagree
past the probe's SPREAD_LIMIT, or that others slowed, is timed again up to MORE_ROUNDS more, until two uncontended
rounds' medians agree (another_round)."""

from __future__ import annotations

from dataclasses import dataclass
from statistics import median
from typing import Any

from tunelab.host.cpuload import LoadMeter, LoadWindow
from tunelab.rundir.probe import MORE_ROUNDS, SPREAD_LIMIT
from tunelab.stats.timing import timing_spread

TIME_BUDGET_S = 1.0  # timed steps after the warm-up, at most (and at least MIN_STEPS of them)
MIN_STEPS = 3
LONG_ROUND_S = 2.0  # a round whose first LONG_STEPS steps took this long together ends with them (steps of seconds)
LONG_STEPS = 2
MEDIANS_AGREE = 0.1  # two uncontended rounds whose medians are this close settle the figure (another_round)
RETIME_BUDGET_S = 10.0  # rounds are timed again (contended, or spread) only while the rounds so far took less

@dataclass(frozen=True)
class Round:
    """One round of timed steps and the machine's load over them (None: not readable here)."""

    times: list[float]
    load: LoadWindow | None

    @property
    def median_s(self) -> float:
        return median(self.times)

    @property
    def spread(self) -> float:
        return timing_spread(self.times) or 0.0

    @property
    def slowdown(self) -> float:
        return self.load.slowdown if self.load is not None else 1.0

    @property
    def contended(self) -> bool:
        return self.load is not None and self.load.contended

    @property
    def disagrees(self) -> bool:
        """Worth timing again: slowest/fastest past the probe's SPREAD_LIMIT, or others held the cores."""
        return self.spread > SPREAD_LIMIT or self.contended


def another_round(rounds: list[Round]) -> bool:
    """Whether the rounds so far need one more: the last disagrees (as the probe's do: train/probe_steps.py), fewer
    than MORE_ROUNDS were added and RETIME_BUDGET_S is not spent (a step of seconds: its correction) — unless the
    last is uncontended and its median is within MEDIANS_AGREE of an earlier uncontended round's. A figure is a
    median: two rounds that agree on it settle it, however far one step strays (on this 2-core host the range of
    a round of tiny's 0.1-s steps passed SPREAD_LIMIT in most rounds, their medians within 5-10 %)."""
    last = rounds[-1]
    if (len(rounds) > MORE_ROUNDS or not last.disagrees
            or sum(sum(r.times) for r in rounds) >= RETIME_BUDGET_S):
        return False
    return last.contended or not any(
        not r.contended and abs(last.median_s / r.median_s - 1) <= MEDIANS_AGREE for r in rounds[:-1])


def timed_round(step: Any) -> Round:
    """Steps timed until MIN_STEPS of them and TIME_BUDGET_S, or LONG_STEPS of them that took LONG_ROUND_S (a step of
    a second or more holds thousands of products: a third adds seconds to a cold plan, and two that disagree past
    SPREAD_LIMIT are timed again all the same), with the load over them."""
    meter = LoadMeter.start()
    times: list[float] = []
    while not round_done(times):
        times.append(step())
    return Round(times, meter.window() if meter is not None else None)


def round_done(times: list[float]) -> bool:
    """Enough steps in a round (_round's rule)."""
    n, total = len(times), sum(times)
    return n >= 64 or (n >= MIN_STEPS and total >= TIME_BUDGET_S) or (n >= LONG_STEPS and total >= LONG_ROUND_S)


