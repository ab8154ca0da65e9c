"""Metrics of the `choice` and `numeric` built-ins as inspect-ai metrics: the wrappers read the scorers' metadata and
call tunelab.stats.metrics. A metric undefined on the data is NaN (null in scores.json)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

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


class ChoiceArrays(NamedTuple):
    probs: np.ndarray  # columns in sorted-label order
    true: list[int]  # the target's column
    labels: list[str]
    targets: list[str]
    predictions: list[str]


def choice_arrays(scores: list[SampleScore]) -> ChoiceArrays:
    metas = [_meta(s) for s in scores]
    labels = sorted(metas[0]["probs"]) if metas else []
    probs = np.array([[m["probs"][lab] for lab in labels] for m in metas], float).reshape(len(scores), len(labels))
    targets = [m["target"] for m in metas]
    return ChoiceArrays(probs, [labels.index(t) for t in targets], labels, targets, [m["prediction"] for m in metas])


def _choice_metric(of: Callable[[ChoiceArrays], float]) -> Metric:
    def compute(scores: list[SampleScore]) -> float:  # typed: inspect reads the annotation
        return of(choice_arrays(scores))

    return compute


@metric
def balanced_accuracy() -> Metric:
    return _choice_metric(lambda a: balanced_accuracy_of(a.targets, a.predictions))


@metric
def macro_f1() -> Metric:
    """Macro-averaged F1 over the answer options."""
    return _choice_metric(lambda a: macro_f1_of(a.targets, a.predictions))


@metric
def ece() -> Metric:
    return _choice_metric(lambda a: ece_of(a.probs, a.true))


@metric
def brier() -> Metric:
    return _choice_metric(lambda a: brier_of(a.probs, a.true, a.labels))


@metric
def roc_auc() -> Metric:
    return _choice_metric(lambda a: roc_auc_of(a.probs, a.true))


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
