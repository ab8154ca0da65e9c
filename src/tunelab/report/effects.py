"""A swept factor's effect: each level's mean over its completed runs and the best-minus-worst difference with its
interval. Apart, so evidence and the sections read the same type without importing each other."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunelab.stats.paired import Difference


@dataclass
class LevelStat:
    level: Any
    mean: float
    n: int
    runs: list[str]


@dataclass
class FactorEffect:
    factor: str
    metric: str  # "score" (a task's primary metric) | "final_val_loss"
    levels: list[LevelStat]
    task: str | None = None  # the task whose primary metric "score" is
    greater_is_better: bool = True
    score_metric: str | None = None  # that primary metric's name (accuracy, mae, ...)
    diff: Difference | None = None  # best level minus worst level, with its interval
    replicated: bool = False  # seeds are swept: each level's runs are seed replicates (diff across them)

    @property
    def spread(self) -> float | None:
        """Highest minus lowest level mean (None with fewer than two levels measured)."""
        if len(self.levels) < 2:
            return None
        return max(s.mean for s in self.levels) - min(s.mean for s in self.levels)

    @property
    def best(self) -> LevelStat | None:
        if len(self.levels) < 2:
            return None
        pick = max if self.greater_is_better else min
        return pick(self.levels, key=lambda s: s.mean)

    @property
    def worst(self) -> LevelStat | None:
        if len(self.levels) < 2:
            return None
        pick = min if self.greater_is_better else max
        return pick(self.levels, key=lambda s: s.mean)
