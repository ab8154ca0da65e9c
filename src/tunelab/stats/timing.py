"""How much repeated timings disagree, and the log-space σ that stands for: the one owner of "spread → σ" for the
plan's, the probe's and the job's timed steps and the history's rows. Pure."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence


def range_spread(seconds: Iterable[float]) -> float | None:
    """How far repeated timings disagree: slowest / fastest − 1; None with fewer than two positive timings."""
    times = [t for t in seconds if t > 0]
    return max(times) / min(times) - 1 if len(times) >= 2 else None


HANDFUL = 10  # up to this many timings, their range is the spread (range_sigma's rule holds for 3 to ~10)


def timing_spread(seconds: Iterable[float]) -> float | None:
    """Their range up to HANDFUL timings; more, the range a handful would span, exp(2σ) − 1 with σ from the
    interquartile range of their logs: the range of many timings is set by their worst one and grows with the count."""
    times = sorted(t for t in seconds if t > 0)
    if len(times) <= HANDFUL:
        return range_spread(times)
    q1, _, q3 = statistics.quantiles([math.log(t) for t in times], n=4)
    return math.expm1(2 * (q3 - q1) / 1.349)


def range_sigma(spread: float) -> float:
    """The log-space σ a `range_spread` stands for: half the log of slowest / fastest (a handful of timings, 3 to
    ~10, spans about two σ of their log-normal noise — a stated rule, not fitted)."""
    return math.log1p(max(0.0, spread)) / 2


def log_spread(values: Sequence[float]) -> float:
    """The standard deviation of the logs of positive values (0 for fewer than two): separate measurements' σ."""
    logs = [math.log(v) for v in values if v and v > 0]
    if len(logs) < 2:
        return 0.0
    mean = sum(logs) / len(logs)
    return math.sqrt(sum((x - mean) ** 2 for x in logs) / (len(logs) - 1))
