"""Every predicted time with its interval, and the loop closed: the recorded errors of a source on a device correct
the next plan's prediction (estimate/interval.py, ledger/predictions.py), measurements timed under contention are
set apart (estimate/runs.py `uncontended`), and a plan with nothing measured times the run's shape itself
(estimate/cpuspeed.py)."""

from __future__ import annotations

import math
import sqlite3

import pytest

from tunelab.estimate.interval import PRIOR_SIGMA, Z90, correction, log_spread, time_range
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
    r = time_range(100.0, SourceKind.PROBED)
    sigma = PRIOR_SIGMA[SourceKind.PROBED]
    assert (r.p10_s, r.p50_s, r.p90_s) == (round(100 * math.exp(-Z90 * sigma), 1), 100.0,
                                           round(100 * math.exp(Z90 * sigma), 1))
    assert "assumed" in r.basis
    # the spread of the measurements widens it (in quadrature)
    wide = time_range(100.0, SourceKind.PROBED, spread=0.3)
    assert wide.p90_s == round(100 * math.exp(Z90 * math.hypot(sigma, 0.3)), 1)
    assert time_range(100.0, SourceKind.ASSUMED).p90_s > time_range(100.0, SourceKind.MEASURED).p90_s


def test_recorded_errors_correct_the_source_on_its_device_and_set_its_width():
    ratios = [1.4, 1.5, 1.6, 1.5]
    records = [_rec(i, r) for i, r in enumerate(ratios)]
    records += [_rec(10, 0.5, kind="probed"), _rec(11, 0.5, device="NVIDIA H100 80GB HBM3"),
                _rec(12, 0.5, part=PredictedPart.EVAL), _rec(13, 9.0, contended=True)]
    fix = correction(records, "cpu", PredictedPart.TRAIN, SourceKind.MEASURED)
    assert fix is not None and fix.n == 4 and fix.contended_left_out == 1
    mid = sorted(math.log(r) for r in ratios)
    median_log = (mid[1] + mid[2]) / 2
    assert fix.median_ratio == pytest.approx(math.exp(median_log))
    assert fix.factor == pytest.approx(math.exp(median_log * 4 / 6))  # shrunk: n / (n + 2)
    assert fix.sigma == pytest.approx(max(0.05, log_spread(ratios)))
    assert "ran 50 % slow here over 4 run(s)" in fix.text("measured")
    # another device's records (a GPU named as the catalog names it)
    gpu = correction(records, "H100-80GB", PredictedPart.TRAIN, SourceKind.MEASURED)
    assert gpu is not None and gpu.n == 1 and gpu.sigma is None
    assert correction(records, "cpu", PredictedPart.TRAIN, SourceKind.TIMED) is None


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
    """A real plan on CPU, twice: with no records its run is timed here (kind `timed`); with four recorded errors of
    `timed` training predictions on this CPU (all 2× slow) the same plan's training part is ×2^(4/6) and its
    interval's width is theirs (the floor: they agree)."""
    from tunelab.plan.planner import make_plan

    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))
    spec = write_spec(factors={"lora_rank": [4]}, training={"epochs": 1})
    first = make_plan(spec).estimates["tiny_r4"]
    assert first.time_kind == "timed" and first.time_range is not None
    assert first.time_range.p10_s < first.seconds < first.time_range.p90_s
    assert first.seconds == first.seconds_raw  # nothing recorded: nothing corrected
    predictions.record([_rec(i, 2.0, kind="timed") for i in range(4)])
    again = make_plan(spec).estimates["tiny_r4"]
    start = again.startup_raw_s or 0.0
    assert again.seconds_raw == pytest.approx(first.seconds_raw, rel=1e-6)  # the same timing (cached)
    factor = 2.0 ** (4 / 6)
    assert again.seconds == pytest.approx(start + (again.seconds_raw - start) * factor, abs=0.2)
    assert "history says timed predictions of this (training) ran 100 % slow here over 4 run(s)" in again.time_source
    assert "4 recorded errors" in again.time_range.basis
