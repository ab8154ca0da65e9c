"""Evaluation metrics as pure functions of plain arrays (scikit-learn where it has them): the inspect-ai metrics wrap
them and intervals recompute them, so a stored metric and its interval come from one function. A metric undefined on the
data is NaN."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

ECE_BINS = 10


# ---------------------------------------------------------------- classification (choice)
def balanced_accuracy_of(y_true: Sequence[str], y_pred: Sequence[str]) -> float:
    """Mean recall over the classes that occur in the targets (predicting an absent class is just wrong)."""

    from sklearn.metrics import balanced_accuracy_score

    if not len(y_true):
        return math.nan
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return float(balanced_accuracy_score(y_true, y_pred))


def macro_f1_of(y_true: Sequence[str], y_pred: Sequence[str]) -> float:
    """Unweighted mean of per-class F1 over the classes present in the targets or predictions."""
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred, average="macro", zero_division=0)) if len(y_true) else math.nan


def ece_of(probs: np.ndarray, y_true_idx: Sequence[int], bins: int = ECE_BINS) -> float:
    """Expected calibration error of the top choice: confidence (its probability) vs accuracy, over
    equal-width bins of confidence, weighted by the bin's share of samples (scikit-learn has none)."""
    if len(probs) == 0:
        return math.nan
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y_true_idx)
    # bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of exactly 0 goes to bin 0
    which = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            total += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(total)


def brier_of(probs: np.ndarray, y_true_idx: Sequence[int], labels: Sequence[str]) -> float:
    """scikit-learn's Brier score: the positive class's squared error with two options (0..1), the sum
    over classes with more (0..2). Columns of `probs` follow `labels`, which must be sorted."""
    from sklearn.metrics import brier_score_loss

    if len(probs) == 0:
        return math.nan
    y_true = [labels[i] for i in y_true_idx]
    return float(brier_score_loss(y_true, probs, labels=list(labels)))


def roc_auc_of(probs: np.ndarray, y_true_idx: Sequence[int]) -> float:
    """Two options: AUC of the second (sorted) option's probability; NaN when only one class occurs."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y_true_idx) == 1
    if probs.shape[1] != 2 or y.all() or not y.any():
        return math.nan
    return float(roc_auc_score(y, probs[:, 1]))


# ---------------------------------------------------------------- regression (numeric)
def regression_of(y_true: Sequence[float], y_pred: Sequence[float | None]) -> dict[str, float]:
    """MAE, RMSE and R² over the parsed predictions; parse rate over all of them."""
    from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

    pairs = [(t, p) for t, p in zip(y_true, y_pred) if p is not None]
    out = {"parse_rate": len(pairs) / len(y_true) if len(y_true) else math.nan,
           "mae": math.nan, "rmse": math.nan, "r2": math.nan}
    if pairs:
        t, p = np.array([a for a, _ in pairs], float), np.array([b for _, b in pairs], float)
        out["mae"] = float(mean_absolute_error(t, p))
        out["rmse"] = float(root_mean_squared_error(t, p))
        if len(pairs) >= 2:
            out["r2"] = float(r2_score(t, p))  # constant targets give 0 or -inf per scikit-learn's rule
    return out
