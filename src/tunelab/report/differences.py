"""How the report writes a difference: the estimate with its 95 % interval and whether it excludes zero (fractions as
percentage points). Apart, so findings and the Evaluation section share it without importing each other."""

from __future__ import annotations

from tunelab.evaluate.kinds import is_fraction
from tunelab.stats.paired import Difference


def show_delta(v: float | None, metric: str | None) -> str:
    if v is None:
        return "—"
    return f"{100 * v:+.1f} pp" if is_fraction(metric) else f"{v:+.4g}"


def _interval(d: Difference, metric: str | None) -> str:
    lo, hi = (100 * d.low, 100 * d.high) if is_fraction(metric) else (d.low, d.high)  # type: ignore[operator]
    return f"[{lo:+.1f}, {hi:+.1f}]" if is_fraction(metric) else f"[{lo:+.4g}, {hi:+.4g}]"


def diff_text(d: Difference | None, metric: str | None, estimate: float | None = None) -> str:
    """A stated difference with its interval: '+10.5 pp [+6.1, +15.2]' when the interval excludes zero,
    'no detectable difference (+1.0 pp [−2.5, +4.5])' when it does not."""
    if d is None or not d.known:
        return f"{show_delta(estimate if d is None else d.estimate, metric)} (no interval: no per-sample scores)"
    welch = "Welch" in d.method  # across seed replicates; else McNemar (accuracy of two single evaluations)
    p = f", {'Welch' if welch else 'McNemar'} p = {d.p_value:.2g}" \
        if d.p_value is not None and (welch or d.metric == "accuracy") else ""
    core = f"{show_delta(d.estimate, metric)} {_interval(d, metric)}"
    return f"{core}{p}" if d.resolved else f"no detectable difference ({core}{p})"


def delta_cell(d: Difference | None, estimate: float | None, metric: str | None) -> str:
    """A table cell: the difference and its interval, '(n.s.)' when the interval includes zero."""
    if d is None or not d.known:
        return show_delta(estimate, metric)
    return f"{show_delta(d.estimate, metric)} {_interval(d, metric)}" + ("" if d.resolved else " (n.s.)")
