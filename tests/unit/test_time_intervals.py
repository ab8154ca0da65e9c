"""Every predicted time with its interval, and the loop closed: the recorded errors of a source on a device correct
the next plan's prediction (forecast/interval.py, ledger/predictions.py), measurements timed under contention are
set apart (forecast/runs.py `uncontended`), and a plan with nothing measured times the run's shape itself
(forecast/cpuspeed.py)."""

from __future__ import annotations

import math
import sqlite3

import pytest

from tunelab.forecast.interval import MIN_RECORDS, conformal_ranks, correction, time_range
from tunelab.forecast.speedhistory import uncontended
from tunelab.ledger import predictions
from tunelab.ledger.history import HistoryRun
from tunelab.ledger.predictions import PredictedPart, PredictionRecord
from tunelab.rundir.estimate import SourceKind


def _rec(i: int, ratio: float, kind: str = "measured", part: PredictedPart = PredictedPart.TRAIN,
         device: str = "cpu", contended: bool | None = False) -> PredictionRecord:
    return PredictionRecord(key=f"r{i}#{part}", part=part, device=device, source=kind, predicted_s=100.0,
                            measured_s=100.0 * ratio, contended=contended, recorded_at=f"2026-11-25T00:00:{i:02d}")


def test_an_interval_without_records_is_its_kinds_assumed_width():
    """P10/P90 = P50 · exp(∓1.2816 σ), σ the kind's assumed width (probed 0.30, measured 0.15, assumed 1.00),
    widened in quadrature by the measurements' spread; every figure worked out by hand."""
    r = time_range(100.0, SourceKind.PROBED)
    # 100·exp(−1.2816·0.30) = 100·exp(−0.3845) = 68.1; 100·exp(+0.3845) = 146.9
    assert (r.p10_s, r.p50_s, r.p90_s) == (68.1, 100.0, 146.9)
    assert "assumed" in r.basis and "σ 0.30" in r.basis
    # σ = √(0.30² + 0.30²) = 0.4243: 100·exp(∓1.2816·0.4243) = 100·exp(∓0.5437) = 58.1 and 172.2
    wide = time_range(100.0, SourceKind.PROBED, spread=0.3)
    assert (wide.p10_s, wide.p90_s) == (58.1, 172.2)
    # assumed σ 1.00: 100·exp(1.2816) = 360.2; measured σ 0.15: 100·exp(∓0.1922) = 82.5 and 121.2
    assert time_range(100.0, SourceKind.ASSUMED).p90_s == 360.2
    measured = time_range(100.0, SourceKind.MEASURED)
    assert (measured.p10_s, measured.p90_s) == (82.5, 121.2)


def test_recorded_errors_correct_the_source_on_its_device_by_their_median_in_full():
    ratios = [1.4, 1.5, 1.6, 1.5]
    records = [_rec(i, r) for i, r in enumerate(ratios)]
    records += [_rec(10, 0.5, kind="probed"), _rec(11, 0.5, device="NVIDIA H100 80GB HBM3"),
                _rec(12, 0.5, part=PredictedPart.EVAL), _rec(13, 9.0, contended=True)]
    fix = correction(records, "cpu", PredictedPart.TRAIN, SourceKind.MEASURED)
    assert fix is not None and fix.n == 4 and fix.contended_left_out == 1
    # sorted ratios 1.4, 1.5, 1.5, 1.6: the median is 1.5, applied in full (no shrink toward 1)
    assert fix.factor == pytest.approx(1.5)
    # 4 records: ⌈0.9 · 5⌉ = 5 > 4, no finite conformal P90: the kind's assumed width, and the words say so
    assert fix.bounds is None
    assert "ran 50 % slow here over 4 run(s): ×1.50 applied, its width still assumed (under 9 runs)" in \
        fix.text("measured")
    r = time_range(150.0, SourceKind.MEASURED, fix=fix)
    # 150·exp(∓1.2816·0.15) = 150·exp(∓0.1922) = 123.8 and 181.8
    assert (r.p10_s, r.p90_s) == (123.8, 181.8)
    assert "width σ 0.15 assumed (4 recorded error(s) here, fewer than the 9 a conformal P10–P90 needs)" in r.basis
    # another device's records (a GPU named as the catalog names it)
    gpu = correction(records, "H100-80GB", PredictedPart.TRAIN, SourceKind.MEASURED)
    assert gpu is not None and gpu.n == 1 and gpu.bounds is None and gpu.factor == 0.5
    assert correction(records, "cpu", PredictedPart.TRAIN, SourceKind.TIMED) is None


def test_conformal_ranks_are_the_split_conformal_indices_and_finite_from_nine_records():
    """⌊0.1 (n+1)⌋ and ⌈0.9 (n+1)⌉, written out for a few n."""
    assert [conformal_ranks(n) for n in (1, 8)] == [None, None]
    assert conformal_ranks(9) == (1, 9) and conformal_ranks(10) == (1, 10)
    assert conformal_ranks(19) == (2, 18) and conformal_ranks(20) == (2, 19) and conformal_ranks(29) == (3, 27)
    assert MIN_RECORDS == 9


def test_nine_records_give_their_own_p10_and_p90_around_their_median():
    logs = [-0.3, -0.2, -0.1, 0.0, 0.05, 0.1, 0.2, 0.3, 0.4]  # shuffled below: ranks, not order, decide
    records = [_rec(i, math.exp(x)) for i, x in enumerate(reversed(logs))]
    fix = correction(records, "cpu", PredictedPart.TRAIN, SourceKind.MEASURED)
    assert fix is not None and fix.n == 9
    # the median 0.05 is the centre; with 9 records P10 and P90 are the 1st and 9th smallest: −0.3 and 0.4
    assert fix.factor == pytest.approx(math.exp(0.05))
    assert fix.bounds == pytest.approx((-0.35, 0.35))
    r = time_range(100.0 * fix.factor, SourceKind.MEASURED, spread=0.5, fix=fix)
    # 100·exp(−0.3) = 74.1, 100·exp(0.05) = 105.1, 100·exp(0.4) = 149.2; the spread is in the errors already
    assert (r.p10_s, r.p50_s, r.p90_s) == (74.1, 105.1, 149.2)
    assert r.basis.startswith("9 recorded errors of measured predictions here: P10–P90 their conformal quantiles")
    assert "its P10–P90 their quantiles" in fix.text("measured")
    # nine that agree: no spread, the ±6 % floor (1.2816 · 0.05 = 0.0641): 200·exp(∓0.0641) = 187.6 and 213.2
    flat = correction([_rec(i, 2.0) for i in range(9)], "cpu", PredictedPart.TRAIN, SourceKind.MEASURED)
    assert flat is not None and flat.factor == pytest.approx(2.0)
    same = time_range(100.0 * flat.factor, SourceKind.MEASURED, fix=flat)
    assert (same.p10_s, same.p50_s, same.p90_s) == (187.6, 200.0, 213.2)


def test_four_records_all_2x_slow_put_the_centre_at_2x_and_2x_inside():
    """The audit's case: four runs all measured at 2× their prediction. The centre moves to 2× (it was ×2^(4/6)
    = 1.59, with P90 1.69×: the truth outside), and the interval around it holds 2×."""
    fix = correction([_rec(i, 2.0) for i in range(4)], "cpu", PredictedPart.TRAIN, SourceKind.MEASURED)
    assert fix is not None and fix.factor == pytest.approx(2.0)
    r = time_range(100.0 * fix.factor, SourceKind.MEASURED, fix=fix)
    assert r.p50_s == 200.0 and r.p10_s < 200.0 < r.p90_s and r.covers(2.0 * 100.0)


def test_records_round_trip_in_the_history_file(tmp_path):
    path = tmp_path / "history.db"
    rows = [_rec(0, 1.2), _rec(1, 0.8, contended=True), _rec(2, 1.0, contended=None)]
    predictions.record(rows, path)
    predictions.record([_rec(0, 2.0)], path)  # the same run's part again: replaced, not added
    back = {r.key: r for r in predictions.load(path)}
    assert len(back) == 3 and back["r0#train"].measured_s == 200.0
    assert back["r1#train"].contended is True and back["r2#train"].contended is None
    assert back["r0#train"].part is PredictedPart.TRAIN
    with sqlite3.connect(path) as conn:  # one history file: the runs' table beside it
        assert {"history", "predictions"} <= {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}


def test_contended_rows_are_used_only_when_nothing_else_was_measured():
    quiet = HistoryRun(key="a", source="tunelab", tokens_per_s=1000.0)
    loud = HistoryRun(key="b", source="tunelab", tokens_per_s=300.0)
    object.__setattr__(loud, "contended", True)
    object.__setattr__(loud, "slowdown", 3.0)
    rows, note = uncontended([quiet, loud])
    assert rows == [quiet] and note == ""
    rows, note = uncontended([loud])
    assert rows[0].tokens_per_s == pytest.approx(900.0) and "under contention" in note and "×3.0" in note
    # every time it measured, divided by its slowdown: the step's split, its start-up and finish
    split = HistoryRun(key="c", source="tunelab", tokens_per_s=300.0, per_token_s=3e-4, step_fixed_s=0.3,
                       startup_s=12.0, finish_s=1.5)
    object.__setattr__(split, "contended", True)
    object.__setattr__(split, "slowdown", 3.0)
    [row], _ = uncontended([split])
    assert (row.per_token_s, row.step_fixed_s, row.startup_s, row.finish_s) == pytest.approx((1e-4, 0.1, 4.0, 0.5))


def test_a_plan_corrected_by_its_sources_recorded_errors(write_spec, tmp_path, monkeypatch, quiet_planning):
    """A real plan on CPU, three times: with no records its run is timed here (kind `timed`: σ 0.30 assumed, widened
    by the timed steps' spread), the start-up and the rest combined as independent parts (each side's distance
    from the P50 added in quadrature); with four recorded errors of `timed` training predictions on this CPU (all
    2× slow) the training part is ×2 in full and 2× is inside its interval, still the assumed width (4 < 9); with
    nine (2× give or take) the rest's P10 and P90 are the records' smallest and largest around their median. The
    start-up (its own `timed` part, nothing recorded of it) is left as it was. The figures the plan measured
    (start-up, the rest, the spread) are read from it; the rule's constants are written here. The load while
    planning is given (none: conftest's quiet_planning), so that the three plans price the same timing alike."""
    from tunelab.plan.planner import make_plan

    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))
    # ten epochs: the training part (seconds) outweighs the start-up, so its width shows in the interval
    spec = write_spec(factors={"lora_rank": [4]}, training={"epochs": 10})
    first = make_plan(spec).estimates["tiny_r4"]
    assert first.time_kind == "timed" and first.startup_kind == "timed" and first.time_range is not None
    assert first.seconds == first.seconds_raw  # nothing recorded: nothing corrected
    start = first.startup_raw_s or 0.0
    rest, spread = first.seconds_raw - start, first.time_spread
    assert start > 0 and rest > 0
    up, down = 1.46885, 1 / 1.46885  # exp(±1.2816·0.30) = exp(±0.38448): the start-up's P90 and P10 factors

    def expect(rest_p50: float, rest_down: float, rest_up: float) -> tuple[float, float]:
        return (start + rest_p50 - math.hypot(start * (1 - down), rest_p50 * (1 - rest_down)),
                start + rest_p50 + math.hypot(start * (up - 1), rest_p50 * (rest_up - 1)))

    def check(est, rest_p50: float, rest_down: float, rest_up: float) -> None:
        p10, p90 = expect(rest_p50, rest_down, rest_up)
        got = (est.time_range.p10_s, est.time_range.p90_s)
        assert got == (pytest.approx(p10, abs=0.2), pytest.approx(p90, abs=0.2))

    wide = 1.2816 * math.hypot(0.30, spread)
    check(first, rest, math.exp(-wide), math.exp(wide))
    end_to_end = start * up + rest * math.exp(wide)  # every part at its P90 at once: what the band used to be
    assert first.time_range.p90_s < end_to_end
    predictions.record([_rec(i, 2.0, kind="timed") for i in range(4)])
    again = make_plan(spec).estimates["tiny_r4"]
    assert (again.seconds_raw, again.startup_raw_s) == (first.seconds_raw, first.startup_raw_s)  # cached timing
    assert again.seconds == pytest.approx(start + rest * 2.0, abs=0.2)  # the rest ×2 in full; the start-up as it was
    check(again, 2 * rest, math.exp(-wide), math.exp(wide))  # still the assumed width: 4 records < 9
    assert again.time_range.covers(start + 2 * rest)
    assert "history says timed predictions of this (training) ran 100 % slow here over 4 run(s)" in again.time_source
    assert "4 recorded error(s) here, fewer than the 9" in again.time_range.basis
    # five more: nine records, ratios 1.8 … 2.2 (median 2.0): P10–P90 their 1st and 9th, ×0.9 and ×1.1 of it
    predictions.record([_rec(i, r, kind="timed") for i, r in zip(range(4, 9), (1.8, 1.9, 2.1, 2.2, 2.0))])
    third = make_plan(spec).estimates["tiny_r4"]
    assert third.seconds == pytest.approx(start + rest * 2.0, abs=0.2)
    check(third, 2 * rest, 0.9, 1.1)
    assert "9 recorded errors of timed predictions here: P10–P90 their conformal quantiles" in third.time_range.basis
