"""Intervals, paired differences, replicates and power against the libraries' own results computed
here independently, and the 95 % interval's coverage in simulations with a known truth."""

from __future__ import annotations

import math
import sqlite3

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.power import NormalIndPower, TTestPower
from statsmodels.stats.proportion import proportion_confint, proportion_effectsize

from tunelab.stats.intervals import arrays_interval, task_intervals
from tunelab.stats.paired import paired_difference
from tunelab.stats.power import detectable_difference, samples_needed
from tunelab.stats.records import SampleValue
from tunelab.stats.replicates import across_replicates, replicate_difference, seed_sd
from tunelab.stats.samples import arrays, batch_metric, metric_on


def _binary(values) -> list[SampleValue]:
    return [SampleValue(id=i, value=float(v)) for i, v in enumerate(values)]


def _numeric(targets, preds) -> list[SampleValue]:
    return [SampleValue(id=i, value=float(p == t), target=float(t), prediction=None if p is None else float(p))
            for i, (t, p) in enumerate(zip(targets, preds))]


# ---------------------------------------------------------------- against the libraries
def test_accuracy_interval_is_statsmodels_wilson():
    values = [1] * 37 + [0] * 13
    iv = arrays_interval(arrays(_binary(values)), "accuracy")
    low, high = proportion_confint(37, 50, alpha=0.05, method="wilson")
    assert (iv.method, iv.low, iv.high) == ("wilson", pytest.approx(low), pytest.approx(high))
    assert iv.seed is None  # nothing random in a Wilson interval


def test_mae_interval_is_scipys_bootstrap_of_the_absolute_errors():
    rng = np.random.default_rng(3)
    t = rng.integers(0, 100, 60).astype(float)
    p = t + rng.normal(0, 3, 60)
    iv = arrays_interval(arrays(_numeric(t, p)), "mae", seed=7)
    ref = stats.bootstrap((np.abs(t - p),), np.mean, n_resamples=2000, method="BCa", rng=np.random.default_rng(7))
    assert iv.method == "bootstrap-bca" and iv.seed == 7 and iv.resamples == 2000
    assert iv.low == pytest.approx(ref.confidence_interval.low) and iv.high == pytest.approx(ref.confidence_interval.high)
    assert iv.low < np.mean(np.abs(t - p)) < iv.high


def test_intervals_of_the_choice_metrics_hold_the_metric_and_are_seeded():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    samples = []
    for i in range(40):
        yes = float(rng.random())
        target = "yes" if rng.random() < 0.5 else "no"
        pred = "yes" if yes > 0.5 else "no"
        samples.append(SampleValue(id=i, value=float(pred == target), target=target, prediction=pred,
                                   probs={"yes": yes, "no": 1 - yes}))
    ivs = task_intervals(samples, ["accuracy", "macro_f1", "brier", "ece", "stderr"])
    assert set(ivs) == {"accuracy", "macro_f1", "brier", "ece"}  # stderr is no score
    f1 = f1_score([s.target for s in samples], [s.prediction for s in samples], average="macro")
    assert metric_on(arrays(samples), "macro_f1") == pytest.approx(f1)
    assert ivs["macro_f1"].low < f1 < ivs["macro_f1"].high and ivs["macro_f1"].resamples == 2000
    assert ivs["ece"].resamples == 1000  # one call per resample
    assert task_intervals(samples, ["macro_f1"])["macro_f1"] == ivs["macro_f1"]  # same seed, same interval


@pytest.mark.parametrize("options", [2, 3])
def test_batched_metrics_equal_the_evaluations_own_functions_on_each_resample(options):
    rng = np.random.default_rng(options)
    labels = ["a", "b", "c"][:options]
    samples = []
    for i in range(30):
        probs = rng.dirichlet(np.ones(options))
        target, pred = labels[rng.integers(options)], labels[int(probs.argmax())]
        samples.append(SampleValue(id=i, value=float(pred == target), target=target, prediction=pred,
                                   probs=dict(zip(labels, probs))))
    arr = arrays(samples)
    rows = rng.integers(0, 30, (40, 30))
    for metric in ("accuracy", "balanced_accuracy", "macro_f1", "brier", "ece"):
        one_by_one = [metric_on(arr.take(r), metric) for r in rows]
        assert batch_metric(arr, metric, rows) == pytest.approx(one_by_one), metric
    t = rng.integers(0, 50, 30).astype(float)
    num = arrays(_numeric(t, t + rng.normal(0, 2, 30)))
    for metric in ("mae", "rmse", "r2", "parse_rate"):
        assert batch_metric(num, metric, rows) == pytest.approx([metric_on(num.take(r), metric) for r in rows])


def test_paired_accuracy_of_two_runs_is_exact_mcnemar_with_its_clopper_pearson_interval():
    rng = np.random.default_rng(1)
    a = (rng.random(120) < 0.75).astype(float)
    b = np.where(rng.random(120) < 0.8, a, 1 - a)  # b agrees with a on ~80 % of samples
    d = paired_difference([_binary(a)], [_binary(b)], "accuracy")
    only_a, only_b = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    m = only_a + only_b
    test = stats.binomtest(only_a, m, 0.5)  # McNemar's exact test is a binomial test on the discordant samples
    ci = test.proportion_ci(0.95, method="exact")
    assert d.estimate == pytest.approx(a.mean() - b.mean()) and d.n == 120
    assert d.p_value == pytest.approx(test.pvalue)
    assert d.low == pytest.approx(m / 120 * (2 * ci.low - 1)) and d.high == pytest.approx(m / 120 * (2 * ci.high - 1))
    assert d.resolved == (test.pvalue < 0.05)
    # 3 of 40 samples right only on one side: the bootstrap would exclude zero, the exact test does not
    few = paired_difference([_binary([1] * 23 + [0] * 17)], [_binary([1] * 20 + [0] * 20)], "accuracy")
    assert few.p_value == pytest.approx(0.25) and few.low < 0 < few.high and not few.resolved


def test_paired_difference_of_levels_is_scipys_bootstrap_of_mean_differences():
    rng = np.random.default_rng(2)
    runs = [(rng.random(80) < p).astype(float) for p in (0.8, 0.7, 0.6, 0.65)]
    d = paired_difference([_binary(runs[0]), _binary(runs[1])], [_binary(runs[2]), _binary(runs[3])], "accuracy",
                          seed=5)
    diff = (runs[0] + runs[1]) / 2 - (runs[2] + runs[3]) / 2
    ref = stats.bootstrap((diff,), np.mean, n_resamples=2000, method="BCa", rng=np.random.default_rng(5))
    assert d.estimate == pytest.approx(diff.mean()) and d.p_value is None
    assert d.low == pytest.approx(ref.confidence_interval.low) and d.high == pytest.approx(ref.confidence_interval.high)


def test_paired_difference_uses_only_shared_samples_and_identical_runs_do_not_differ():
    a = _binary([1, 0, 1, 1, 0, 1])
    b = [SampleValue(id=i + 2, value=v.value) for i, v in enumerate(a)]  # ids 2..7: shares ids 2..5 with a
    assert paired_difference([a], [b], "accuracy").n == 4
    same = paired_difference([a], [a], "accuracy")
    assert (same.estimate, same.low, same.high, same.resolved) == (0.0, 0.0, 0.0, False)
    assert paired_difference([a], [[]], "accuracy") is None


def test_replicates_against_scipy():
    x = [0.71, 0.74, 0.69, 0.75]
    s = across_replicates(x)
    low, high = stats.t.interval(0.95, 3, loc=np.mean(x), scale=stats.sem(x))
    assert (s.n, s.mean, s.sd) == (4, pytest.approx(np.mean(x)), pytest.approx(np.std(x, ddof=1)))
    assert (s.low, s.high) == (pytest.approx(low), pytest.approx(high))
    y = [0.60, 0.66, 0.62]
    d = replicate_difference(x, y, "accuracy")
    ref = stats.ttest_ind(x, y, equal_var=False)
    assert d.p_value == pytest.approx(ref.pvalue) and d.low == pytest.approx(ref.confidence_interval().low)
    groups = [x, y, [0.5]]  # a configuration with one seed says nothing about seed-to-seed spread
    pooled = (np.var(x, ddof=1) * 3 + np.var(y, ddof=1) * 2) / 5
    assert seed_sd(groups) == pytest.approx(math.sqrt(pooled))


def test_detectable_difference_has_the_stated_power():
    det = detectable_difference(200)
    h = proportion_effectsize(0.5 + det.unpaired, 0.5)
    assert NormalIndPower().power(effect_size=h, nobs1=200, alpha=0.05, ratio=1.0) == pytest.approx(0.8, abs=1e-4)
    up, down = (0.2 + det.paired) / 2, (0.2 - det.paired) / 2  # per-sample difference +1 / -1, else 0
    mean_d = up - down
    sd_d = math.sqrt(up + down - mean_d ** 2)
    assert TTestPower().power(effect_size=mean_d / sd_d, nobs=200, alpha=0.05) == pytest.approx(0.8, abs=1e-4)
    assert 0.13 < det.unpaired < 0.15 and det.paired < det.unpaired  # pairing resolves smaller differences
    assert detectable_difference(2000).unpaired < det.unpaired
    n = samples_needed(det.unpaired)
    assert n in (200, 201)


def test_ledger_of_before_intervals_stays_readable(tmp_path):
    from tunelab.ledger import store as ledger

    with sqlite3.connect(tmp_path / ledger.LEDGER_FILE) as conn:
        conn.execute("CREATE TABLE evals (run TEXT NOT NULL, label TEXT NOT NULL, epoch INTEGER, task TEXT NOT NULL, "
                     "metric TEXT NOT NULL, value REAL, is_primary INTEGER NOT NULL, greater_is_better INTEGER NOT "
                     "NULL, kind TEXT, builtin TEXT, file TEXT, dataset TEXT, split TEXT, samples INTEGER, log_path "
                     "TEXT, duration_s REAL, evaluated_at TEXT, PRIMARY KEY (run, label, task, metric))")
        conn.execute("INSERT INTO evals (run, label, task, metric, value, is_primary, greater_is_better) "
                     "VALUES ('r', 'base', 't', 'accuracy', 0.5, 1, 1)")
    [row] = ledger.query(tmp_path, "SELECT * FROM evals")
    assert row["value"] == 0.5 and row["ci_low"] is None and row["ci_method"] is None


# ---------------------------------------------------------------- coverage with a known truth
def test_wilson_interval_covers_the_true_accuracy_95_percent_of_the_time():
    rng = np.random.default_rng(11)
    truth, n, sims = 0.7, 100, 1000
    hits = 0
    for _ in range(sims):
        iv = arrays_interval(arrays(_binary(rng.random(n) < truth)), "accuracy")
        hits += iv.low <= truth <= iv.high
    assert abs(hits / sims - 0.95) < 0.03


def test_bootstrap_interval_covers_the_true_mae_about_95_percent_of_the_time():
    rng = np.random.default_rng(12)
    sigma, n, sims = 2.0, 80, 250
    truth = sigma * math.sqrt(2 / math.pi)  # E|e| of e ~ N(0, sigma)
    hits = 0
    for k in range(sims):
        t = rng.integers(0, 100, n).astype(float)
        iv = arrays_interval(arrays(_numeric(t, t + rng.normal(0, sigma, n))), "mae", seed=k)
        hits += iv.low <= truth <= iv.high
    assert abs(hits / sims - 0.95) < 0.04


def test_paired_difference_interval_covers_the_true_difference():
    rng = np.random.default_rng(13)
    n, sims = 150, 500
    hits = 0
    for k in range(sims):  # a right 75 %; b copies a's answer on half the samples, else is right 65 %
        a = rng.random(n) < 0.75
        own = rng.random(n) < 0.65
        # true P(b right) = 0.5 * 0.75 + 0.5 * 0.65 = 0.70, so the true difference is 0.05
        b = np.where(rng.random(n) < 0.5, a, own)
        d = paired_difference([_binary(a)], [_binary(b)], "accuracy", seed=k)
        hits += d.low <= 0.05 <= d.high
    assert abs(hits / sims - 0.95) < 0.04


def test_detectable_difference_answers_every_test_size(tmp_path, monkeypatch):
    """statsmodels' solve_power answers a 1-element array for some sizes (120 did: plan failed with a TypeError on a
    split of 120 test samples); every size answers a number, smaller as the split grows."""
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path))  # computed here, not read from an earlier cache
    found = [detectable_difference(n) for n in range(10, 301, 5)]
    unpaired = [d.unpaired for d in found]
    assert all(isinstance(u, float) for u in unpaired)
    assert all(a > b for a, b in zip(unpaired, unpaired[1:]))
    paired = [d.paired for d in found if d.paired is not None]
    assert len(paired) > 50 and all(a > b for a, b in zip(paired, paired[1:]))


def test_a_numeric_task_with_one_parsed_answer_scores_without_an_error_interval():
    """Twelve sums, the model gave one number (it failed the whole task with scipy's 'two or more observations'):
    mae over that one answer has no interval, parse_rate its Wilson interval of 1 in 12."""
    samples = [SampleValue(id=i, value=0.0, target=float(3 * i + 1), prediction=None) for i in range(12)]
    samples[0] = SampleValue(id=0, value=0.0, target=1.0, prediction=3.0)
    ivs = task_intervals(samples, ["mae", "rmse", "r2", "parse_rate"])
    assert set(ivs) == {"parse_rate"}
    low, high = proportion_confint(1, 12, alpha=0.05, method="wilson")
    assert (ivs["parse_rate"].low, ivs["parse_rate"].high) == pytest.approx((low, high))
