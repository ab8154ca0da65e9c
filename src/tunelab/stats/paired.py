"""Differences measured on the same test samples: run vs run, fine-tuned vs control, level vs level (a side's score the
mean of its runs'). Accuracy between two evaluations: McNemar's exact test and a Clopper–Pearson interval (the bootstrap
is unreliable with few discordant samples); everything else a seeded paired bootstrap. A difference is resolved when its
interval excludes zero."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tunelab.stats.intervals import bootstrap_indices
from tunelab.stats.records import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, CONFIDENCE, ROW_RESAMPLES, SampleValue
from tunelab.stats.samples import (
    SampleArrays,
    arrays,
    batch_metric,
    is_binary,
    metric_on,
    per_sample,
    supported,
    vectorized,
)


@dataclass(frozen=True)
class Difference:
    """a minus b on one metric, with its interval (None where it cannot be computed)."""

    metric: str
    estimate: float
    low: float | None
    high: float | None
    n: int  # test samples in the comparison
    method: str
    p_value: float | None = None  # exact McNemar (accuracy of two single evaluations) or Welch (replicates)
    confidence: float = CONFIDENCE

    @property
    def known(self) -> bool:
        return self.low is not None and self.high is not None

    @property
    def resolved(self) -> bool:
        """The interval excludes zero: a detectable difference."""
        return self.known and (self.low > 0 or self.high < 0)  # type: ignore[operator]


def _common(sides: list[list[SampleArrays]], metric: str) -> list[list[SampleArrays]]:
    """Every evaluation restricted to the samples all of them scored (and, for MAE/RMSE/R², all parsed)."""
    flat = [a for side in sides for a in side]
    keep = set(flat[0].ids).intersection(*(a.ids for a in flat[1:]))
    if metric in ("mae", "rmse", "r2"):
        for a in flat:
            keep -= {i for i, p in zip(a.ids, a.predictions) if p is None}
    return [[a.take(np.array([k for k, i in enumerate(a.ids) if i in keep], int)) for a in side] for side in sides]


def mcnemar_difference(a: np.ndarray, b: np.ndarray, confidence: float = CONFIDENCE
                       ) -> tuple[float, float, float, int]:
    """(low, high, exact McNemar p, discordant) of mean(a) - mean(b) for paired 0/1 vectors: with m discordant, a right
    on k, the difference is m/n (2k/m - 1), its interval from Clopper–Pearson of k/m."""
    from sklearn.metrics import confusion_matrix
    from statsmodels.stats.contingency_tables import mcnemar
    from statsmodels.stats.proportion import proportion_confint

    table = confusion_matrix(a, b, labels=[1, 0])
    only_a, only_b = int(table[0, 1]), int(table[1, 0])
    m, n = only_a + only_b, len(a)
    if m == 0:
        return 0.0, 0.0, 1.0, 0
    lo, hi = proportion_confint(only_a, m, alpha=1 - confidence, method="beta")
    return m / n * (2 * lo - 1), m / n * (2 * hi - 1), float(mcnemar(table, exact=True).pvalue), m


def paired_difference(a: list[list[SampleValue]], b: list[list[SampleValue]], metric: str,
                      seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE) -> Difference | None:
    """Mean metric of side a minus side b on the samples both share; None when it cannot be recomputed."""
    if not a or not b or not all(a) or not all(b):
        return None
    side_a, side_b = [arrays(s) for s in a], [arrays(s) for s in b]
    if not all(supported(x, metric) for x in side_a + side_b):
        return None
    side_a, side_b = _common([side_a, side_b], metric)
    n = len(side_a[0])
    if n < 2:
        return None
    estimate = float(np.mean([metric_on(x, metric) for x in side_a]) - np.mean([metric_on(x, metric) for x in side_b]))
    if not math.isfinite(estimate):
        return None

    xs_a, xs_b = [per_sample(x, metric) for x in side_a], [per_sample(x, metric) for x in side_b]
    per_a, per_b = [x for x in xs_a if x is not None], [x for x in xs_b if x is not None]
    if len(per_a) == len(xs_a) and len(per_b) == len(xs_b):  # a mean of per-sample numbers: resample their differences
        d = np.mean(per_a, axis=0) - np.mean(per_b, axis=0)

        def stat(idx: np.ndarray) -> np.ndarray:
            return d[idx].mean(axis=-1)
    else:
        def stat(idx: np.ndarray) -> np.ndarray:
            return (np.mean([batch_metric(x, metric, idx) for x in side_a], axis=0)
                    - np.mean([batch_metric(x, metric, idx) for x in side_b], axis=0))

    if metric == "accuracy" and len(side_a) == len(side_b) == 1 and is_binary(xs_a[0]) and is_binary(xs_b[0]):
        low, high, p, m = mcnemar_difference(xs_a[0].astype(int), xs_b[0].astype(int), confidence)
        return Difference(metric, estimate, low, high, n, f"exact McNemar on {m} discordant of {n} test samples",
                          p, confidence)
    resamples = BOOTSTRAP_RESAMPLES if vectorized(metric) else ROW_RESAMPLES
    iv = bootstrap_indices(n, stat, seed=seed, resamples=resamples, confidence=confidence)
    method = (f"paired bootstrap over {n} test samples ({iv.method.removeprefix('bootstrap-')}, "
              f"{resamples} resamples, seed {seed})") if iv else "paired bootstrap undefined on these samples"
    return Difference(metric, estimate, iv.low if iv else None, iv.high if iv else None, n, method, None, confidence)


def mean_interval(runs: list[list[SampleValue]], metric: str, seed: int = BOOTSTRAP_SEED,
                  confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The interval of the mean metric of several evaluations on their shared samples (a level's error bars)."""
    if not runs or not all(runs):
        return None
    side = [arrays(s) for s in runs]
    if not all(supported(x, metric) for x in side):
        return None
    [side] = _common([side], metric)
    if len(side[0]) < 2:
        return None
    resamples = BOOTSTRAP_RESAMPLES if vectorized(metric) else ROW_RESAMPLES
    iv = bootstrap_indices(len(side[0]), lambda idx: np.mean([batch_metric(x, metric, idx) for x in side], axis=0),
                           seed=seed, resamples=resamples, confidence=confidence)
    return (iv.low, iv.high) if iv else None
