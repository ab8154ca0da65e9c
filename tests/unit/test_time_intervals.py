"""Every predicted time with its interval, and the loop closed: the recorded errors of a source on a device correct
the next plan's prediction (estimate/interval.py, ledger/predictions.py), measurements timed under contention are
set apart (estimate/runs.py `uncontended`), and a plan with nothing measured times the run's shape itself
(estimate/cpuspeed.py)."""

from __future__ import annotations

import math
import sqlite3

import pytest

from tunelab.estimate.interval import correction, time_range
from tunelab.estimate.speedhistory import uncontended
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


def test_recorded_errors_correct_the_source_on_its_device_and_set_its_width():
    ratios = [1.4, 1.5, 1.6, 1.5]
    records = [_rec(i, r) for i, r in enumerate(ratios)]
    records += [_rec(10, 0.5, kind="probed"), _rec(11, 0.5, device="NVIDIA H100 80GB HBM3"),
                _rec(12, 0.5, part=PredictedPart.EVAL), _rec(13, 9.0, contended=True)]
    fix = correction(records, "cpu", PredictedPart.TRAIN, SourceKind.MEASURED)
    assert fix is not None and fix.n == 4 and fix.contended_left_out == 1
    # sorted ratios 1.4, 1.5, 1.5, 1.6: the median is 1.5; shrunk by n / (n + 2) = 4/6: 1.5^(2/3) = 1.3104
    assert fix.median_ratio == pytest.approx(1.5)
    assert fix.factor == pytest.approx(1.3104, abs=1e-4)
    # logs 0.3365, 0.4055, 0.4055, 0.4700: mean 0.4044, squared deviations summed 0.008920, / 3 → σ = 0.0545
    # (above the 0.05 floor)
    assert fix.sigma == pytest.approx(0.0545, abs=1e-4)
    assert "ran 50 % slow here over 4 run(s)" in fix.text("measured")
    # another device's records (a GPU named as the catalog names it)
    gpu = correction(records, "H100-80GB", PredictedPart.TRAIN, SourceKind.MEASURED)
    assert gpu is not None and gpu.n == 1 and gpu.sigma is None
    assert correction(records, "cpu", PredictedPart.TRAIN, SourceKind.TIMED) is None
    # three records that agree: their spread is 0, the width its 0.05 floor; 2^(3/5) = 1.5157
    flat = correction([_rec(i, 2.0) for i in range(3)], "cpu", PredictedPart.TRAIN, SourceKind.MEASURED)
    assert flat is not None and flat.sigma == 0.05 and flat.factor == pytest.approx(1.5157, abs=1e-4)


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


def test_a_plan_corrected_by_its_sources_recorded_errors(write_spec, tmp_path, monkeypatch):
    """A real plan on CPU, twice: with no records its run is timed here (kind `timed`: σ 0.60 assumed, widened by
    the timed steps' spread); with four recorded errors of `timed` training predictions on this CPU (all 2× slow)
    the same plan's training part is ×2^(4/6) and its interval's width is theirs (the 0.05 floor: they agree).
    The start-up (its own `timed` part, σ 0.60, nothing recorded of it) is left as it was. The figures the plan
    measured (start-up, the rest, the spread) are read from it; the rule's constants are written here."""
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
    # P90 = start·exp(1.2816·0.60) + rest·exp(1.2816·√(0.60² + spread²)); exp(0.7690) = 2.1575
    p90 = start * 2.1575 + rest * math.exp(1.2816 * math.hypot(0.60, spread))
    p10 = start / 2.1575 + rest * math.exp(-1.2816 * math.hypot(0.60, spread))
    assert (first.time_range.p10_s, first.time_range.p90_s) == (pytest.approx(p10, abs=0.2),
                                                                pytest.approx(p90, abs=0.2))
    predictions.record([_rec(i, 2.0, kind="timed") for i in range(4)])
    again = make_plan(spec).estimates["tiny_r4"]
    assert (again.seconds_raw, again.startup_raw_s) == (first.seconds_raw, first.startup_raw_s)  # cached timing
    # the rest ×2^(4/6) = ×1.5874; the start-up as it was
    assert again.seconds == pytest.approx(start + rest * 1.5874, abs=0.2)
    # the rest's σ: √(0.05² + spread²); the start-up's still 0.60 (2.1575)
    p90 = start * 2.1575 + rest * 1.5874 * math.exp(1.2816 * math.hypot(0.05, spread))
    p10 = start / 2.1575 + rest * 1.5874 * math.exp(-1.2816 * math.hypot(0.05, spread))
    assert (again.time_range.p10_s, again.time_range.p90_s) == (pytest.approx(p10, abs=0.2),
                                                                pytest.approx(p90, abs=0.2))
    assert "history says timed predictions of this (training) ran 100 % slow here over 4 run(s)" in again.time_source
    assert "4 recorded errors" in again.time_range.basis
