"""The choice and numeric metrics against hand computations on hand-made inputs, both as pure
functions and through the inspect-ai metrics that read the scorers' metadata."""

from __future__ import annotations

import math

import numpy as np
import pytest
from inspect_ai.scorer import SampleScore, Score

from tunelab.evaluate import metrics as m

LABELS = ["no", "yes"]
# four samples of a two-option task: P(yes), and the truth
P_YES = [0.9, 0.8, 0.45, 0.4]
TRUTH = ["yes", "no", "no", "yes"]


def _choice_scores(probs: list[dict[str, float]], truth: list[str]) -> list[SampleScore]:
    out = []
    for i, (p, t) in enumerate(zip(probs, truth)):
        pred = max(p, key=lambda o: p[o])
        out.append(SampleScore(sample_id=i, score=Score(value="C" if pred == t else "I", answer=pred,
                                                         metadata={"probs": p, "target": t, "prediction": pred})))
    return out


def _binary():
    probs = [{"no": 1 - p, "yes": p} for p in P_YES]
    return _choice_scores(probs, TRUTH)


def test_binary_choice_metrics_by_hand():
    scores = _binary()
    # predictions: yes, yes, no, no  vs truth yes, no, no, yes
    # recall(yes) = 1/2, recall(no) = 1/2 -> balanced accuracy 0.5
    assert m.balanced_accuracy()(scores) == pytest.approx(0.5)
    # F1(yes): precision 1/2, recall 1/2 -> 0.5; F1(no) likewise -> macro 0.5
    assert m.macro_f1()(scores) == pytest.approx(0.5)
    # Brier (binary, positive class 'yes'): mean (p - y)^2
    expected = ((0.9 - 1) ** 2 + (0.8 - 0) ** 2 + (0.45 - 0) ** 2 + (0.4 - 1) ** 2) / 4
    assert m.brier()(scores) == pytest.approx(expected)
    # AUC: P(score_pos > score_neg) over the 2 x 2 pairs: pos {0.9, 0.4}, neg {0.8, 0.45} -> 0.9 beats both,
    # 0.4 beats neither -> 2/4
    assert m.roc_auc()(scores) == pytest.approx(0.5)
    # ECE: confidences 0.9 (right), 0.8 (wrong), 0.55 (right), 0.6 (wrong); bins (0.8,0.9], (0.7,0.8], (0.5,0.6]
    ece = 0.25 * abs(1 - 0.9) + 0.25 * abs(0 - 0.8) + 0.5 * abs(0.5 - (0.55 + 0.6) / 2)
    assert m.ece()(scores) == pytest.approx(ece)


def test_multiclass_choice_metrics_by_hand():
    probs = [{"a": 0.7, "b": 0.2, "c": 0.1}, {"a": 0.5, "b": 0.3, "c": 0.2}, {"a": 0.1, "b": 0.6, "c": 0.3},
             {"a": 0.2, "b": 0.2, "c": 0.6}]
    truth = ["a", "b", "b", "a"]
    scores = _choice_scores(probs, truth)  # predictions a, a, b, c
    # recall(a) = 1/2, recall(b) = 1/2 (c never true) -> balanced accuracy 0.5
    assert m.balanced_accuracy()(scores) == pytest.approx(0.5)
    # F1 a: P 1/2 R 1/2 -> .5; b: P 1 R 1/2 -> 2/3; c: P 0 R 0 -> 0; macro over 3 classes
    assert m.macro_f1()(scores) == pytest.approx((0.5 + 2 / 3 + 0) / 3)
    onehot = {"a": [1, 0, 0], "b": [0, 1, 0]}
    brier = np.mean([sum((p[k] - y) ** 2 for k, y in zip("abc", onehot[t])) for p, t in zip(probs, truth)])
    assert m.brier()(scores) == pytest.approx(brier)  # multiclass: summed over classes (0..2)
    assert math.isnan(m.roc_auc()(scores))  # only for two options


def test_auc_undefined_with_one_class_and_empty_inputs():
    scores = _choice_scores([{"no": 0.3, "yes": 0.7}, {"no": 0.6, "yes": 0.4}], ["yes", "yes"])
    assert math.isnan(m.roc_auc()(scores))
    for metric in (m.balanced_accuracy(), m.macro_f1(), m.ece(), m.brier(), m.roc_auc(), m.mae(), m.r2()):
        assert math.isnan(metric([]))


def _numeric(preds: list[float | None], truth: list[float]) -> list[SampleScore]:
    return [SampleScore(sample_id=i, score=Score(value="I", metadata={"prediction": p, "target": t}))
            for i, (p, t) in enumerate(zip(preds, truth))]


def test_numeric_metrics_by_hand_unparsed_only_in_parse_rate():
    scores = _numeric([1.5, None, 2.0, 5.0], [1.0, 2.0, 3.0, 4.0])
    # parsed pairs (1, 1.5), (3, 2), (4, 5): errors 0.5, -1, 1
    assert m.mae()(scores) == pytest.approx((0.5 + 1 + 1) / 3)
    assert m.rmse()(scores) == pytest.approx(math.sqrt((0.25 + 1 + 1) / 3))
    t = [1.0, 3.0, 4.0]
    ss_tot = sum((v - sum(t) / 3) ** 2 for v in t)
    assert m.r2()(scores) == pytest.approx(1 - 2.25 / ss_tot)
    assert m.parse_rate()(scores) == pytest.approx(0.75)
    nothing = _numeric([None, None], [1.0, 2.0])
    assert m.parse_rate()(nothing) == 0.0 and math.isnan(m.mae()(nothing))
    assert math.isnan(m.r2()(_numeric([1.0], [2.0])))  # R² needs two values


def test_pure_ece_bins_are_equal_width():
    probs = np.array([[0.05, 0.95], [0.5, 0.5], [1.0, 0.0]])
    # confidences 0.95 (right: truth 1), 0.5 (argmax 0, truth 1: wrong), 1.0 (right); bins (0.9,1.0] x2, (0.4,0.5]
    assert m.ece_of(probs, [1, 1, 0]) == pytest.approx(2 / 3 * abs(1 - 0.975) + 1 / 3 * abs(0 - 0.5))


def test_the_metric_math_and_the_report_load_no_inspect_ai():
    """`tunelab report` recomputes intervals with the evaluation's own functions (stats.metrics) without
    loading inspect-ai: checked in a fresh interpreter, since this test module imports it."""
    import subprocess
    import sys

    code = ("import sys; import tunelab.report.build, tunelab.stats.samples; from tunelab.stats import metrics; "
            "assert metrics.balanced_accuracy_of(['a', 'b'], ['a', 'a']) == 0.5; "
            "print(sorted(m for m in sys.modules if m.startswith('inspect_ai')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
