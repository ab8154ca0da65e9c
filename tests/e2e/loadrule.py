"""cpuload.py's documented load rule, written out apart from it, for the tests that check a recorded load against
its own raw figures: a process's threads wanted min(threads, cores) cores and had what others left of them (at
least 0.1 core); slowed by more than ×1.15 it is contended."""

from __future__ import annotations

CONTENDED_ABOVE = 1.15


def slowdown_by_rule(threads: int, cores: int, held_by_others: float) -> float:
    """The slowdown of `threads` threads on `cores` cores while others held `held_by_others` cores' worth."""
    return max(1.0, min(threads, cores) / max(cores - held_by_others, 0.1))


def check_contended(contended: bool, slowdown: float) -> None:
    """The recorded flag against the rule, where the slowdown is far enough from the line for rounded figures."""
    if abs(slowdown - CONTENDED_ABOVE) > 0.01:
        assert contended is (slowdown > CONTENDED_ABOVE), (contended, slowdown)
