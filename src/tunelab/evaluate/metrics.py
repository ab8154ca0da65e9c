"""Metrics of the `choice` and `numeric` built-ins as inspect-ai metrics: the wrappers read the scorers' metadata and
call tunelab.stats.metrics. A metric undefined on the data is NaN (null in scores.json)."""

from __future__ import annotations

from typing import Any

import numpy as np
from inspect_ai.scorer import Metric, SampleScore, metric

from tunelab.errors import TunelabError

# Which metrics are fractions or lower-is-better: defined in kinds.py (light), re-exported here.
from tunelab.evaluate.kinds import FRACTIONS, LOWER_IS_BETTER  # noqa: F401

# The math itself (no inspect-ai), re-exported for the tasks and their tests.
from tunelab.stats.metrics import (  # noqa: F401
    ECE_BINS,
    balanced_accuracy_of,
    brier_of,
    ece_of,
    macro_f1_of,
    regression_of,
    roc_auc_of,
)


# ---------------------------------------------------------------- inspect-ai metrics
def _meta(s: SampleScore) -> dict[str, Any]:
    """What the built-in scorer put in the score's metadata (it always puts some)."""
    if s.score.metadata is None:
        raise TunelabError(f"sample {s.sample_id}: the score has no metadata (not a score of a built-in scorer)")
    return s.score.metadata


def choice_arrays(scores: list[SampleScore]) -> tuple[np.ndarray, list[int], list[str], list[str], list[str]]:
    """(probabilities with columns in sorted-label order, true index, labels, targets, predictions)."""
    metas = [_meta(s) for s in scores]
    labels = sorted(metas[0]["probs"]) if metas else []
    probs = np.array([[m["probs"][lab] for lab in labels] for m in metas], float).reshape(
        len(scores), len(labels))
    targets = [m["target"] for m in metas]
    preds = [m["prediction"] for m in metas]
    return probs, [labels.index(t) for t in targets], labels, targets, preds


@metric
def balanced_accuracy() -> Metric:
    def compute(scores: list[SampleScore]) -> float:
        _, _, _, targets, preds = choice_arrays(scores)
        return balanced_accuracy_of(targets, preds)

    return compute


@metric
def macro_f1() -> Metric:
    """Macro-averaged F1 over the answer options."""

    def compute(scores: list[SampleScore]) -> float:
        _, _, _, targets, preds = choice_arrays(scores)
        return macro_f1_of(targets, preds)

    return compute


@metric
def ece() -> Metric:
    def compute(scores: list[SampleScore]) -> float:
        probs, idx, _, _, _ = choice_arrays(scores)
        return ece_of(probs, idx)

    return compute


@metric
def brier() -> Metric:
    def compute(scores: list[SampleScore]) -> float:
        probs, idx, labels, _, _ = choice_arrays(scores)
        return brier_of(probs, idx, labels)

    return compute


@metric
def roc_auc() -> Metric:
    def compute(scores: list[SampleScore]) -> float:
        probs, idx, _, _, _ = choice_arrays(scores)
        return roc_auc_of(probs, idx)

    return compute


def _regression_metric(name: str) -> Metric:
    def compute(scores: list[SampleScore]) -> float:  # typed: inspect reads the annotation
        metas = [_meta(s) for s in scores]
        return regression_of([m["target"] for m in metas], [m["prediction"] for m in metas])[name]

    return compute


@metric
def mae() -> Metric:
    return _regression_metric("mae")


@metric
def rmse() -> Metric:
    return _regression_metric("rmse")


@metric
def r2() -> Metric:
    return _regression_metric("r2")


@metric
def parse_rate() -> Metric:
    return _regression_metric("parse_rate")
