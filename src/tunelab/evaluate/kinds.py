"""What kind of number a metric is (a fraction shown in %, lower or higher better), and how it is shown.

Free of numpy and inspect-ai, so `tunelab results` (a command typed between jobs) stays instant.
"""

from __future__ import annotations

LOWER_IS_BETTER = frozenset({"mae", "rmse", "ece", "brier"})
# Metrics in [0, 1] shown as percentages (ECE too: an expected gap between confidence and accuracy).
FRACTIONS = frozenset({"accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "parse_rate", "ece"})


def is_fraction(metric: str | None) -> bool:
    """'accuracy' or 'exact_match/accuracy' → True."""
    return (metric or "").split("/")[-1] in FRACTIONS


def show(v: float | None, metric: str | None) -> str:
    """A metric value: '80.0 %' for fractions, '0.1234' otherwise, '—' when missing."""
    if v is None:
        return "—"
    return f"{100 * v:.1f} %" if is_fraction(metric) else f"{v:.4g}"


def show_ci(v: float | None, interval: tuple[float, float] | list[float] | None, metric: str | None) -> str:
    """A value with its 95 % interval: '80.0 % [71.2, 86.9]'; the value alone where none was computed."""
    if v is None or interval is None:
        return show(v, metric)
    low, high = interval
    if is_fraction(metric):
        return f"{100 * v:.1f} % [{100 * low:.1f}, {100 * high:.1f}]"
    return f"{v:.4g} [{low:.4g}, {high:.4g}]"
