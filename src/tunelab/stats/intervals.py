"""The 95 % interval of one score from its per-sample records: Wilson for proportions, a seeded bootstrap for other
metrics (BCa, percentile where undefined), regression metrics over the samples that parsed."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable

import numpy as np

from tunelab.stats.records import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, CONFIDENCE, ROW_RESAMPLES, Interval, SampleValue
from tunelab.stats.samples import (
    PROPORTIONS,
    SampleArrays,
    arrays,
    batch_metric,
    is_binary,
    metric_on,
    parsed,
    per_sample,
    supported,
    vectorized,
)


def wilson(count: int, nobs: int, confidence: float = CONFIDENCE) -> Interval:
    from statsmodels.stats.proportion import proportion_confint

    low, high = proportion_confint(count, nobs, alpha=1 - confidence, method="wilson")
    return Interval(low=float(low), high=float(high), method="wilson", confidence=confidence)


def bootstrap_indices(n: int, statistic: Callable[[np.ndarray], np.ndarray], *, seed: int = BOOTSTRAP_SEED,
                      resamples: int = BOOTSTRAP_RESAMPLES, confidence: float = CONFIDENCE) -> Interval | None:
    """scipy's bootstrap over n test samples, `statistic` mapping resampled indices to a value each. None when undefined
    on the resamples or fewer than two samples (the task still scores)."""
    from scipy.stats import bootstrap

    if n < 2:
        return None

    def stat(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        return statistic(np.moveaxis(np.asarray(idx), axis, -1))

    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # degenerate data: BCa gives NaN and warns; percentile follows
            res = bootstrap((np.arange(n),), stat, vectorized=True, n_resamples=resamples, method=method,
                            confidence_level=confidence, rng=np.random.default_rng(seed))
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(low) and math.isfinite(high):
            return Interval(low=low, high=high, method=f"bootstrap-{method.lower()}", confidence=confidence,
                            seed=seed, resamples=resamples)
    return None


def arrays_interval(arr: SampleArrays, metric: str, seed: int = BOOTSTRAP_SEED,
                    resamples: int | None = None, confidence: float = CONFIDENCE) -> Interval | None:
    """The interval of `metric` on these records (None when it cannot be recomputed or is undefined)."""
    if not supported(arr, metric) or not math.isfinite(metric_on(arr, metric)):
        return None
    x = per_sample(arr, metric)
    if metric in PROPORTIONS and is_binary(x):
        return wilson(int(x.sum()), len(x), confidence)
    resamples = resamples or (BOOTSTRAP_RESAMPLES if vectorized(metric) else ROW_RESAMPLES)
    if x is not None:  # a mean of per-sample numbers, computed once
        return bootstrap_indices(len(x), lambda idx: x[idx].mean(axis=-1), seed=seed, resamples=resamples,
                                 confidence=confidence)
    if metric in ("mae", "rmse", "r2"):
        arr = parsed(arr)
    return bootstrap_indices(len(arr), lambda idx: batch_metric(arr, metric, idx), seed=seed, resamples=resamples,
                             confidence=confidence)


def task_intervals(samples: list[SampleValue], metrics: Iterable[str], seed: int = BOOTSTRAP_SEED
                   ) -> dict[str, Interval]:
    """Every metric of one evaluation that its records support, by name."""
    arr = arrays(samples)
    out = {}
    for metric in metrics:
        iv = arrays_interval(arr, metric, seed)
        if iv is not None:
            out[metric] = iv
    return out
