"""Intervals from the errors actually seen (forecast/interval.py, forecast/combine.py): over many seeded draws the
split-conformal P10–P90 of n recorded errors holds a new run's error as often as the conformal ranks say — for a
skewed error distribution too —; parts that err independently make a narrower band than every part at its P10 or
P90 at once; a run's sum is priced from the records of such sums once there are nine; and the one rule for "how far
repeated timings disagree → σ" (stats/timing.py) is what the probe's, the plan's timing and the history's rows use."""

from __future__ import annotations

import math
import random

import pytest

from tunelab.forecast.combine import independent, summed, whole_errors
from tunelab.forecast.interval import correction, time_range
from tunelab.ledger.predictions import PredictedPart, PredictionRecord
from tunelab.rundir.estimate import SourceKind, TimeRange

TRAINING = frozenset({PredictedPart.TRAIN_START, PredictedPart.TRAIN})


def _rec(run: str, part: PredictedPart, predicted: float, measured: float, device: str = "cpu",
         source: str = "probed", contended: bool | None = False) -> PredictionRecord:
    return PredictionRecord(key=f"{run}#{part}", part=part, device=device, source=source, predicted_s=predicted,
                            measured_s=measured, contended=contended)


def _skewed(rng: random.Random) -> float:
    """A log error with a long slow tail and a bias: 0.1 + 0.25 · (Exp(1) − 1) + N(0, 0.1²)."""
    return 0.1 + 0.25 * (rng.expovariate(1.0) - 1.0) + rng.gauss(0.0, 0.1)


@pytest.mark.parametrize("n, expected", [(9, 8 / 10), (12, 11 / 13), (19, 16 / 20)])
def test_conformal_intervals_cover_a_held_out_run_as_often_as_their_ranks_say(n, expected):
    """Each draw: n records of a source's errors and one new run from the same (skewed) distribution; the plan's
    interval around the corrected prediction, from `correction` and `time_range`, either holds the new measured time
    or not. With exchangeable errors a new one falls inside the ⌊0.1 (n+1)⌋-th … ⌈0.9 (n+1)⌉-th smallest with
    probability exactly (k_hi − k_lo) / (n + 1) — 8/10 at n = 9, 11/13 at n = 12, 16/20 at n = 19 (written out by
    hand) —, so the count over independent draws is binomial: it must lie within 4 of its standard deviations."""
    rng = random.Random(20260554 + n)
    draws, raw = 3000, 1000.0
    inside = 0
    for _ in range(draws):
        records = [_rec(f"r{i}", PredictedPart.TRAIN, raw, raw * math.exp(_skewed(rng))) for i in range(n)]
        fix = correction(records, "cpu", PredictedPart.TRAIN, SourceKind.PROBED)
        assert fix is not None and fix.bounds is not None
        interval = time_range(raw * fix.factor, SourceKind.PROBED, fix=fix)
        inside += interval.covers(raw * math.exp(_skewed(rng)))
    sd = math.sqrt(draws * expected * (1 - expected))
    assert abs(inside - draws * expected) <= 4 * sd, (inside / draws, expected)


def test_the_old_rule_would_miss_a_constant_2x_and_the_new_centre_does_not():
    """Four runs all 2× slow: the interval's centre is 2× and the band holds 2× (forecast/interval.py's rule before
    this gave P50 ×1.59 and P90 ×1.69)."""
    records = [_rec(f"r{i}", PredictedPart.TRAIN, 100.0, 200.0) for i in range(4)]
    fix = correction(records, "cpu", PredictedPart.TRAIN, SourceKind.PROBED)
    assert fix is not None
    interval = time_range(100.0 * fix.factor, SourceKind.PROBED, fix=fix)
    assert interval.p50_s == 200.0 and interval.p10_s < 200.0 < interval.p90_s


def test_independent_parts_make_a_narrower_band_than_every_part_at_its_bound_and_match_the_hand_sum():
    a = TimeRange(p10_s=60.0, p50_s=100.0, p90_s=150.0)
    b = TimeRange(p10_s=10.0, p50_s=20.0, p90_s=40.0)
    both = independent([a, None, b])
    assert both is not None
    # P50 100 + 20 = 120; below √(40² + 10²) = 41.23 → 78.8; above √(50² + 20²) = 53.85 → 173.9
    assert (both.p10_s, both.p50_s, both.p90_s) == (78.8, 120.0, 173.9)
    end_to_end = (a.p10_s + b.p10_s, a.p90_s + b.p90_s)  # 70 and 190: every part erring the same way at once
    assert end_to_end[0] < both.p10_s and both.p90_s < end_to_end[1]
    assert independent([a]) is a and independent([None]) is None


def _training_runs(count: int, start_ratio: float = 2.0) -> list[PredictionRecord]:
    """`count` past training jobs, start-up 10 s predicted and `start_ratio`× measured, the rest 90 s predicted and
    measured at exp(d) of it, d spread evenly over −0.2 … 0.2 (median 0)."""
    out = []
    for i in range(count):
        d = -0.2 + 0.4 * i / max(1, count - 1)
        out += [_rec(f"run{i}", PredictedPart.TRAIN_START, 10.0, 10.0 * start_ratio),
                _rec(f"run{i}", PredictedPart.TRAIN, 90.0, 90.0 * math.exp(d))]
    return out


def test_a_sum_is_priced_from_the_recorded_errors_of_such_sums_once_there_are_nine():
    """Nine past training jobs with both parts recorded: each one's error is its measured sum against its
    predictions corrected as a plan corrects them today (the start-up ×2, the median of its records; the rest ×1),
    log((20 + 90 e^d) / (20 + 90)); with nine, P10 and P90 are the smallest and the largest (d = ∓0.2)."""
    records = _training_runs(9)
    # the runs left out: another device's, one with its start-up only (2×: it keeps the start-up's median), one
    # with a contended part (left out of the corrections too)
    records += [_rec("gpu", PredictedPart.TRAIN_START, 10.0, 99.0, device="NVIDIA H100 80GB HBM3"),
                _rec("gpu", PredictedPart.TRAIN, 90.0, 999.0, device="NVIDIA H100 80GB HBM3"),
                _rec("half", PredictedPart.TRAIN_START, 10.0, 20.0),
                _rec("busy", PredictedPart.TRAIN_START, 10.0, 20.0), _rec("busy", PredictedPart.TRAIN, 90.0, 999.0,
                                                                          contended=True)]
    errors = whole_errors(records, "cpu", TRAINING)
    assert sorted(errors) == pytest.approx(sorted(math.log((20 + 90 * math.exp(-0.2 + 0.05 * i)) / 110)
                                                  for i in range(9)))
    start = TimeRange(p10_s=10.0, p50_s=20.0, p90_s=40.0)  # the parts as the plan corrected them
    rest = TimeRange(p10_s=70.0, p50_s=90.0, p90_s=120.0)
    got = summed([rest, start], records, "cpu", TRAINING, "the training job")
    assert got is not None
    low, high = (20 + 90 * math.exp(-0.2)) / 110, (20 + 90 * math.exp(0.2)) / 110
    assert (got.p10_s, got.p50_s, got.p90_s) == (round(110 * low, 1), 110.0, round(110 * high, 1))
    assert "conformal quantiles of 9 recorded errors of such sums here" in got.basis
    # eight: too few for a finite bound, so the parts as independent, and the basis says how many there were
    fewer = summed([rest, start], _training_runs(8), "cpu", TRAINING, "the training job")
    assert fewer == independent([rest, start]).model_copy(update={"basis": fewer.basis})
    assert "8 recorded of such sums here; 9 give their own P10–P90" in fewer.basis


def test_one_rule_turns_disagreeing_timings_into_a_sigma_everywhere():
    """Timings 0.10, 0.12 and 0.11 s disagree by 0.12 / 0.10 − 1 = 20 %, which stands for σ = ln(1.2) / 2 = 0.0912
    — the same figure from the probe's timed steps, the plan's own timing rounds and the history's rows."""
    from tunelab.forecast.speedhistory import _spread
    from tunelab.forecast.step_rounds import Round
    from tunelab.ledger.history import HistoryRun
    from tunelab.stats.timing import range_sigma, range_spread
    from tunelab.train.step_cost import TimedSteps

    times = [0.10, 0.12, 0.11]
    assert range_spread(times) == pytest.approx(0.2) and range_spread([0.1]) is None
    assert range_sigma(0.2) == pytest.approx(0.0912, abs=1e-4)
    assert TimedSteps({8: [(t, 64.0) for t in times], 16: [(0.3, 128.0)]}).spread() == pytest.approx(0.2)
    assert Round(times, None).spread == pytest.approx(0.2)
    row = HistoryRun(key="p", source="probe", tokens_per_s=1000.0, time_spread=0.2)
    assert _spread([row], [1000.0]) == pytest.approx(0.0912, abs=1e-4)



def test_many_timings_are_read_by_their_quartiles_so_one_preempted_step_is_not_noise():
    """60 timings drawn log-normal with σ = 0.05 (seeded) and one step preempted to 5× its time: their range says
    ≥ 400 % (one outlier), the spread of a plan's timing round says what σ = 0.05 spans for a handful of timings,
    exp(2 · 0.05) − 1 ≈ 0.105, i.e. σ ≈ 0.05 back (from the quartiles: within the sampling error of 60 draws),
    under the re-time limit of 0.2; 10 timings or fewer keep their range, as the probe's handful always did."""
    from tunelab.forecast.step_rounds import Round
    from tunelab.rundir.probe import SPREAD_LIMIT
    from tunelab.stats.timing import range_sigma, range_spread, timing_spread

    rng = random.Random(7)
    times = [0.02 * math.exp(rng.gauss(0.0, 0.05)) for _ in range(59)] + [0.1]
    assert range_spread(times) > 4.0
    assert range_sigma(timing_spread(times)) == pytest.approx(0.05, rel=0.35)  # the σ it stands for: 60 draws' own
    assert Round(times, None).spread == timing_spread(times) < SPREAD_LIMIT and not Round(times, None).disagrees
    assert timing_spread(times[:10]) == range_spread(times[:10])
    wide = [0.02 * math.exp(rng.gauss(0.0, 0.2)) for _ in range(60)]  # σ 0.2: genuinely noisy, timed again
    assert range_sigma(timing_spread(wide)) == pytest.approx(0.2, rel=0.35) and Round(wide, None).disagrees

def test_a_plans_run_total_takes_its_parts_as_independent_without_records(write_spec, tmp_path, monkeypatch):
    """A real CPU plan, no history: the deadline's line for the run (forecast/sweeptime.py `timeline`) has the P10 and
    P90 of its training (start-up and the rest), its evaluation job's start and its evaluation added as independent
    parts — each side's distance from the P50 in quadrature, worked out here from the parts' own intervals — not
    every part at its bound at once."""
    from tunelab.forecast.evalrun import predict_run_eval
    from tunelab.forecast.sweeptime import Sweep, timeline, with_history
    from tunelab.plan.planner import make_plan, split_lengths

    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))
    plan = make_plan(write_spec(factors={"lora_rank": [4]}))
    sweep = with_history(Sweep(plan.spec, plan.runs, plan.estimates, plan.gpu, plan.node))
    cfg = next(c for c in plan.runs if c.training is not None)
    est = plan.estimates[cfg.name]
    assert est.time_range is not None and est.startup_s is not None  # the start-up timed: no job start assumed
    line = timeline(cfg, est, sweep, split_lengths)
    ev = predict_run_eval(cfg, None, split_lengths, sweep.history or [], sweep.generation, errors=sweep.errors,
                          estimate=est)
    parts = [est.time_range, ev.range, ev.start.range()]
    parts += [time_range(line.saves_s, SourceKind.ASSUMED)] if line.saves_s else []
    assert all(p is not None for p in parts)
    centre = sum(p.p50_s for p in parts)
    below = math.sqrt(sum((p.p50_s - p.p10_s) ** 2 for p in parts))
    above = math.sqrt(sum((p.p90_s - p.p50_s) ** 2 for p in parts))
    assert line.total_s == pytest.approx(centre, abs=0.25)
    assert (line.total_p10_s, line.total_p90_s) == (pytest.approx(centre - below, abs=0.15),
                                                    pytest.approx(centre + above, abs=0.15))
    assert sum(p.p10_s for p in parts) < line.total_p10_s and line.total_p90_s < sum(p.p90_s for p in parts)
