"""`seed` swept as a factor is replication: the spread of a score across seeds, and whether a factor's
effect exceeds it (scipy's t interval and Welch's t-test; statsmodels for the pooled seed-to-seed SD)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tunelab.stats.paired import Difference
from tunelab.stats.records import CONFIDENCE

SEED_FACTOR = "seed"


@dataclass(frozen=True)
class Spread:
    """One configuration's score over its seed replicates."""

    n: int
    mean: float
    sd: float | None  # sample standard deviation (n - 1)
    low: float | None  # t interval of the mean across replicates
    high: float | None
    min: float
    max: float


def across_replicates(values: list[float], confidence: float = CONFIDENCE) -> Spread:
    from scipy import stats

    x = np.asarray(values, float)
    mean = float(x.mean())
    if len(x) < 2:
        return Spread(len(x), mean, None, None, None, float(x.min()), float(x.max()))
    sd = float(np.std(x, ddof=1))
    if sd == 0:
        low = high = mean
    else:
        low, high = (float(v) for v in stats.t.interval(confidence, len(x) - 1, loc=mean, scale=stats.sem(x)))
    return Spread(len(x), mean, sd, low, high, float(x.min()), float(x.max()))


def replicate_difference(a: list[float], b: list[float], metric: str, confidence: float = CONFIDENCE
                         ) -> Difference | None:
    """Mean of a minus mean of b across replicate runs: Welch's t interval (needs two runs a side)."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return None
    estimate = float(np.mean(a) - np.mean(b))
    if np.std(a) == 0 and np.std(b) == 0:
        return Difference(metric, estimate, estimate, estimate, len(a) + len(b),
                          f"Welch t across {len(a)} + {len(b)} replicate runs (no spread)", None, confidence)
    res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(confidence)
    return Difference(metric, estimate, float(ci.low), float(ci.high), len(a) + len(b),
                      f"Welch t across {len(a)} + {len(b)} replicate runs", float(res.pvalue), confidence)


def seed_sd(groups: list[list[float]]) -> float | None:
    """Pooled seed-to-seed standard deviation: the residual SD of a one-way model of the score on the
    configuration (statsmodels OLS), over configurations with at least two seeds."""
    import statsmodels.api as sm

    groups = [g for g in groups if len(g) >= 2]
    if not groups:
        return None
    y = np.concatenate([np.asarray(g, float) for g in groups])
    x = np.zeros((len(y), len(groups)))
    row = 0
    for j, g in enumerate(groups):
        x[row:row + len(g), j] = 1.0
        row += len(g)
    fit = sm.OLS(y, x).fit()
    return float(math.sqrt(fit.mse_resid)) if fit.df_resid > 0 else None
