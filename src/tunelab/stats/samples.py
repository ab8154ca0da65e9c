"""A metric recomputed on per-sample records, or on any resampled subset of them, with the very
functions the evaluation used (`tunelab.stats.metrics`), so an interval is the stored metric's own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeGuard

import numpy as np

from tunelab.stats import metrics as m
from tunelab.stats.metrics import brier_of
from tunelab.stats.records import SampleValue

MEAN_OF_VALUES = frozenset({"accuracy", "mean"})  # inspect's accuracy() / mean(): the mean of the scorer's values
PROPORTIONS = frozenset({"accuracy", "parse_rate"})  # Wilson intervals when every per-sample value is 0 or 1
CHOICE = frozenset({"balanced_accuracy", "macro_f1", "ece", "brier", "roc_auc"})
REGRESSION = frozenset({"mae", "rmse", "r2", "parse_rate"})
NO_INTERVAL = frozenset({"stderr", "std", "var"})  # uncertainty of a metric, not a score of its own


@dataclass(frozen=True)
class SampleArrays:
    """The per-sample records of one evaluation as columns, ordered by sample id."""

    ids: list[int | str]
    values: np.ndarray  # float, NaN where the scorer gave no number
    targets: list
    predictions: list
    probs: np.ndarray | None  # columns follow `labels` (sorted), as the evaluation's metrics order them
    labels: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, idx: np.ndarray) -> SampleArrays:
        return SampleArrays([self.ids[i] for i in idx], self.values[idx], [self.targets[i] for i in idx],
                            [self.predictions[i] for i in idx], None if self.probs is None else self.probs[idx],
                            self.labels)


def arrays(samples: list[SampleValue]) -> SampleArrays:
    rows = sorted(samples, key=lambda s: (str(type(s.id)), s.id))
    values = np.array([math.nan if s.value is None else s.value for s in rows], float)
    probs: np.ndarray | None = None
    labels: list[str] = []
    dists = [s.probs for s in rows if s.probs]
    if rows and len(dists) == len(rows):  # every sample has its options' probabilities
        labels = sorted(dists[0])
        probs = np.array([[d[lab] for lab in labels] for d in dists], float)
    return SampleArrays([s.id for s in rows], values, [s.target for s in rows], [s.prediction for s in rows],
                        probs, labels)


def supported(arr: SampleArrays, metric: str) -> bool:
    """Whether `metric` can be recomputed from these records (a task file's other metrics cannot)."""
    if metric in NO_INTERVAL or "/" in metric or not len(arr):
        return False
    if metric in MEAN_OF_VALUES:
        return not np.isnan(arr.values).all()
    if metric in CHOICE:
        return arr.probs is not None and all(t in arr.labels for t in arr.targets)
    if metric in REGRESSION:
        return all(isinstance(t, (int, float)) for t in arr.targets)
    return False


def metric_on(arr: SampleArrays, metric: str) -> float:
    """The metric of these records, by the evaluation's own function (NaN where undefined)."""
    if metric in MEAN_OF_VALUES:
        finite = arr.values[~np.isnan(arr.values)]
        return float(finite.mean()) if len(finite) else math.nan
    if metric in REGRESSION:
        preds = [None if p is None else float(p) for p in arr.predictions]
        return m.regression_of([float(t) for t in arr.targets], preds)[metric]
    truth = [arr.labels.index(t) for t in arr.targets]
    if metric == "balanced_accuracy":
        return m.balanced_accuracy_of(arr.targets, arr.predictions)
    if metric == "macro_f1":
        return m.macro_f1_of(arr.targets, arr.predictions)
    if metric == "ece":
        return m.ece_of(arr.probs, truth)  # type: ignore[arg-type]
    if metric == "brier":
        return m.brier_of(arr.probs, truth, arr.labels)  # type: ignore[arg-type]
    if metric == "roc_auc":
        return m.roc_auc_of(arr.probs, truth)  # type: ignore[arg-type]
    raise KeyError(metric)


def per_sample(arr: SampleArrays, metric: str) -> np.ndarray | None:
    """The per-sample numbers of a metric that is their mean (accuracy, parse rate, Brier), else None."""
    if metric in MEAN_OF_VALUES and not np.isnan(arr.values).any():
        return arr.values
    if metric == "parse_rate":
        return np.array([p is not None for p in arr.predictions], float)
    if metric == "brier" and arr.probs is not None:
        truth = [arr.labels.index(t) for t in arr.targets]
        return np.array([brier_of(arr.probs[i:i + 1], truth[i:i + 1], arr.labels) for i in range(len(arr))])
    return None


def parsed(arr: SampleArrays) -> SampleArrays:
    """The samples with a parsed prediction: what MAE, RMSE and R² are computed over."""
    return arr.take(np.array([i for i, p in enumerate(arr.predictions) if p is not None], int))


def batch_metric(arr: SampleArrays, metric: str, idx: np.ndarray) -> np.ndarray:
    """The metric on each row of resampled sample indices: vectorized for means and regression metrics, else row by row.
    Regression metrics expect parsed samples only (see `parsed`)."""
    idx = np.asarray(idx, int)
    x = per_sample(arr, metric)
    if x is not None:
        return x[idx].mean(axis=-1)
    rows = idx.reshape(-1, idx.shape[-1])
    if metric in ("mae", "rmse", "r2"):
        from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

        fn = {"mae": mean_absolute_error, "rmse": root_mean_squared_error, "r2": r2_score}[metric]
        t = np.array(arr.targets, float)[rows].T
        p = np.array(arr.predictions, float)[rows].T
        out = fn(t, p, multioutput="raw_values") if len(t) >= (2 if metric == "r2" else 1) else np.full(len(rows),
                                                                                                        math.nan)
    elif metric in ("balanced_accuracy", "macro_f1"):
        out = _batch_classification(arr, metric, rows)
    else:
        out = np.array([metric_on(arr.take(r), metric) for r in rows])
    return np.asarray(out, float).reshape(idx.shape[:-1])


def _batch_classification(arr: SampleArrays, metric: str, rows: np.ndarray) -> np.ndarray:
    """Balanced accuracy and macro F1 of many resamples in one scikit-learn call, resample b's classes relabelled b·K +
    k, each averaged over the classes that resample has (tests hold them equal to the single-sample ones)."""
    from sklearn.metrics import precision_recall_fscore_support

    k = len(arr.labels)
    truth = np.array([arr.labels.index(t) for t in arr.targets])[rows]
    pred = np.array([arr.labels.index(p) for p in arr.predictions])[rows]
    offset = (np.arange(len(rows)) * k)[:, None]
    t, p = (truth + offset).ravel(), (pred + offset).ravel()
    every = np.arange(len(rows) * k)
    _, recall, f1, support = precision_recall_fscore_support(t, p, labels=every, average=None, zero_division=0)
    in_true = support.reshape(-1, k) > 0
    if metric == "balanced_accuracy":  # mean recall over the classes present in the targets
        return (recall.reshape(-1, k) * in_true).sum(axis=1) / in_true.sum(axis=1)
    present = in_true | (np.bincount(p, minlength=len(every)).reshape(-1, k) > 0)  # in targets or predictions
    return (f1.reshape(-1, k) * present).sum(axis=1) / present.sum(axis=1)


def vectorized(metric: str) -> bool:
    """Whether `batch_metric` computes all resamples of this metric at once (else one call per resample)."""
    return metric in MEAN_OF_VALUES or metric in ("parse_rate", "brier", "mae", "rmse", "r2", "balanced_accuracy",
                                                  "macro_f1")


def is_binary(x: np.ndarray | None) -> TypeGuard[np.ndarray]:
    return x is not None and len(x) > 0 and bool(np.isin(x, (0.0, 1.0)).all())
