"""The sweep re-planned while it runs (forecast/remaining.py): a small experiment's files — one run trained and scored,
one halfway at a known live pace, one not started — and a deadline. The remaining makespan is checked against
figures worked out by hand from the run.yaml estimates and the pace; the warning appears exactly when the P90
passes the deadline; `tunelab status` prints it and `status --json` carries it."""

from __future__ import annotations

import io
import json
import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.execute.status import status_rows
from tunelab.execute.watch import watch
from tunelab.forecast.deadline import DeadlineVerdict
from tunelab.forecast.remaining import Phase, sweep_remaining
from tunelab.fsutil import atomic_write_json
from tunelab.mcp.models import phase_of, replanned
from tunelab.rundir import MetricRow, write_status
from tunelab.rundir.config import RunConfig, save_run_config
from tunelab.rundir.estimate import RunEstimate, TimeRange
from tunelab.rundir.experiment import task_names
from tunelab.rundir.metrics import append_metric, seconds_left

runner = CliRunner()
START = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
Z90, MEASURED_SIGMA = 1.2816, 0.15  # forecast/interval.py's z and the measured kind's width, written by hand
DEADLINE_S = 480.0  # "8m"


@pytest.fixture(autouse=True)
def fresh_history(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))


def _estimate(name: str) -> RunEstimate:
    """Training 100 s (P10–P90 80–125, start-up included and measured: 10 s), evaluation 20 s (16–25)."""
    return RunEstimate(run=name, steps=100, seconds=100.0, startup_s=10.0, startup_kind="measured",
                       time_kind="measured", time_range=TimeRange(p10_s=80.0, p50_s=100.0, p90_s=125.0),
                       eval_seconds=20.0, eval_source="history", eval_range=TimeRange(p10_s=16.0, p50_s=20.0,
                                                                                      p90_s=25.0),
                       makespan_s=390.0, makespan_range=TimeRange(p10_s=300.0, p50_s=390.0, p90_s=480.0))


def _sweep(write_spec, started: datetime = START) -> Path:
    spec = write_spec(resources={"deadline": "8m"})
    exp = spec.parent
    for name in ("r1", "r2", "r3"):
        cfg = RunConfig(name=name, kind="finetune", experiment="t", experiment_dir=str(exp),
                        model={"name": "tiny", "path": str(exp / "m")}, dataset={"name": "caps", "path": "d.json"},
                        prompt="{input}", training={"lora_rank": 4}, estimate=_estimate(name))
        save_run_config(cfg, cfg.run_dir / "run.yaml")
        if name == "r1":  # trained and scored
            write_status(cfg.run_dir, state="completed", first_started_at=started.isoformat(),
                         started_at=started.isoformat(), finished_at=(started + timedelta(seconds=130)).isoformat(),
                         step=100, total_steps=100)
            atomic_write_json(cfg.run_dir / "summary.json", {"run": name, "state": "completed", "steps": 100})
            for task in task_names(cfg):
                atomic_write_json(cfg.run_dir / "eval" / "epoch_1" / task / "scores.json", {"task": task})
        if name == "r2":  # halfway, 0.5 s a step over its last rows (its start-up before: the first row's 10 s)
            write_status(cfg.run_dir, state="running", started_at=(started + timedelta(seconds=150)).isoformat(),
                         step=50, total_steps=100)
            for step in (10, 20, 30, 40, 50):
                append_metric(cfg.run_dir, MetricRow(step=step, loss=1.0, elapsed_s=5.0 + 0.5 * step))
    return exp


def _hand() -> dict[str, float]:
    """What is left, worked out by hand: r2's 50 steps at 0.5 s (25 s, the measured kind's width: σ 0.15, no
    spread), then its evaluation's start (10 s measured, σ 0.15) and evaluation (20 s, 16–25); r3 whole (100 s,
    80–125, then 10 + 20 s). A run's parts err independently: each side's distance from the P50 added in
    quadrature (forecast/combine.py). One CPU: one run after the other, so the makespan is the runs' sum, each at
    its P10 (or P90)."""
    lo, hi = math.exp(-Z90 * MEASURED_SIGMA), math.exp(Z90 * MEASURED_SIGMA)
    r2 = (55 - math.hypot(25 * (1 - lo), 10 * (1 - lo), 4), 55, 55 + math.hypot(25 * (hi - 1), 10 * (hi - 1), 5))
    r3 = (130 - math.hypot(20, 10 * (1 - lo), 4), 130, 130 + math.hypot(25, 10 * (hi - 1), 5))
    return {"p10": r2[0] + r3[0], "p50": r2[1] + r3[1], "p90": r2[2] + r3[2]}


PHASES = {"r1": Phase.DONE, "r2": Phase.TRAINING, "r3": Phase.WAITING}


def test_the_live_pace_is_over_the_recent_rows(tmp_path):
    rows = [MetricRow(step=s, elapsed_s=60.0 + 0.5 * s) for s in range(10, 110, 10)]  # a 60 s start-up first
    assert seconds_left(rows, 100, 200) == pytest.approx(50.0)  # 0.5 s a step, not (110 / 100) s
    assert seconds_left(rows[:1], 10, 20) == pytest.approx(65.0 / 10 * 10)  # one row: its mean pace
    assert seconds_left(rows, 200, 200) is None and seconds_left([], 5, 10) is None


def test_the_remaining_makespan_is_the_runs_left_placed_by_the_plans_forecast(write_spec):
    exp = _sweep(write_spec)
    hand = _hand()
    out = sweep_remaining(exp, PHASES, now=START + timedelta(seconds=200))
    assert [(r.run, r.phase) for r in out.runs] == list(PHASES.items())
    r2 = out.runs[1]
    assert r2.eta_s == pytest.approx(25.0) and r2.seconds_per_step == pytest.approx(0.5)
    assert out.runs[0].left_s == 0
    assert out.remaining_s == pytest.approx(hand["p50"], abs=0.3)
    assert out.remaining_p10_s == pytest.approx(hand["p10"], abs=0.3)
    assert out.remaining_p90_s == pytest.approx(hand["p90"], abs=0.3)
    assert out.elapsed_s == 200 and out.makespan_s == pytest.approx(200 + hand["p50"], abs=0.3)
    assert out.planned is not None and out.planned.p50_s == 390
    assert out.verdict == DeadlineVerdict.FITS and not out.warning
    assert "left (P10–P90" in out.line and "deadline 8m: fits at P90" in out.line


def test_the_warning_appears_exactly_when_the_p90_passes_the_deadline(write_spec):
    exp = _sweep(write_spec)
    hand = _hand()
    just_fits = DEADLINE_S - hand["p90"] - 1  # elapsed seconds that leave the P90 one second inside the deadline
    fits = sweep_remaining(exp, PHASES, now=START + timedelta(seconds=just_fits))
    assert fits.verdict == DeadlineVerdict.FITS and fits.warning == ""
    late = sweep_remaining(exp, PHASES, now=START + timedelta(seconds=just_fits + 2))
    assert late.verdict == DeadlineVerdict.FITS_P50
    assert late.warning.startswith("deadline 8m no longer met at P90") and "to fit, of the runs not finished: " in late.warning
    assert late.gives and all(g.change in late.warning for g in late.gives)
    past = sweep_remaining(exp, PHASES, now=START + timedelta(seconds=DEADLINE_S - hand["p50"] + 1))
    assert past.verdict == DeadlineVerdict.DOES_NOT_FIT and past.warning


def test_status_rows_read_as_the_replan_phases(write_spec):
    exp = _sweep(write_spec)
    assert {r.name: phase_of(r) for r in status_rows(exp)} == PHASES


def test_status_prints_the_replan_and_json_carries_it(write_spec):
    exp = _sweep(write_spec, started=datetime.now(UTC) - timedelta(hours=1))  # an hour in: past 8m
    result = runner.invoke(app, ["status", str(exp)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "sweep: " in result.output and "deadline 8m: does not fit" in result.output
    assert "deadline 8m no longer met at P90" in result.output
    result = runner.invoke(app, ["status", str(exp), "--json"])
    assert result.exit_code == 0, result.output
    remaining = json.loads(result.stdout)["remaining"]
    assert remaining["verdict"] == "does_not_fit" and remaining["warning"]
    assert [r["phase"] for r in remaining["runs"]] == ["done", "training", "waiting"]
    assert remaining["remaining_s"] == pytest.approx(_hand()["p50"], abs=0.3)


def test_watch_shows_the_replan_at_each_look_and_warns_once(write_spec):
    exp = _sweep(write_spec, started=datetime.now(UTC) - timedelta(hours=1))
    looks: list[int] = []

    def rows_of():  # the first look sees r2 training; the second sees nothing active (the watch ends)
        looks.append(1)
        rows = status_rows(exp)
        return rows if len(looks) == 1 else [replace(r, active=False) for r in rows]

    def replan(rows):
        remaining = replanned(exp, rows)
        assert remaining is not None
        return remaining.line, remaining.warning

    out = io.StringIO()
    watch(exp, rows_of, Console(file=out, width=300), interval_s=0.01, replan=replan)
    text = out.getvalue()
    assert len(looks) == 2 and text.count("deadline 8m no longer met at P90") == 1
    assert "deadline 8m: does not fit" in text and "sweep ETA" not in text


def test_a_finished_sweep_stops_its_clock_at_its_last_end_and_one_not_started_says_so(write_spec):
    exp = _sweep(write_spec)
    done = sweep_remaining(exp, dict.fromkeys(PHASES, Phase.DONE), now=START + timedelta(hours=5))
    assert done.remaining_s == 0 and done.elapsed_s == 130  # r1's training end; no later evaluation written
    assert done.line.startswith("sweep: done in") and done.verdict == DeadlineVerdict.FITS and not done.warning
    for name in ("r1", "r2"):  # nothing started yet
        (exp / "runs" / name / "status.json").unlink()
    fresh = sweep_remaining(exp, dict.fromkeys(PHASES, Phase.WAITING))
    assert fresh.started_at is None and fresh.elapsed_s == 0 and fresh.line.startswith("sweep: not started")
    assert fresh.remaining_s == pytest.approx(3 * 130)


def test_a_learning_rate_searchs_first_trial_starts_the_sweeps_clock(write_spec):
    """The plan's verdict counts the search before the runs, so the deadline's clock starts at its first trial."""
    from tunelab.rundir.tuned import trial_dir

    exp = _sweep(write_spec)
    earlier = START - timedelta(minutes=3)
    write_status(trial_dir(exp, "lora_rank-4", 0), state="completed", first_started_at=earlier.isoformat(),
                 started_at=earlier.isoformat())
    now = START + timedelta(seconds=200)
    r = sweep_remaining(exp, PHASES, now=now)
    assert r.started_at == earlier.isoformat(timespec="seconds") and r.elapsed_s == 380.0
    assert r.time_left_s == DEADLINE_S - 380.0
