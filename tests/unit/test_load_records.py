"""The machine's load where timings are kept: summary.json's `load`, metrics rows, the probe's result (every
timing, spread, rounds), the history's columns (an older history file opens and reads them as unknown), the
history table's load label and the probe's one line about a contended or spread shape."""

from __future__ import annotations

import json
import sqlite3

from tunelab.estimate.probe import Shape, caveat
from tunelab.host.cpuload import LoadWindow
from tunelab.ledger import history
from tunelab.rundir.config import RunConfig
from tunelab.rundir.metrics import MetricRow
from tunelab.rundir.probe import ProbePoint, ProbeResult, read_probe_results, write_probe_results
from tunelab.rundir.summary import StepCost, Summary
from tunelab.train.step_cost import TimedSteps

BUSY = LoadWindow(wall_s=10.0, cpu_s=12.0, others_cpu_s=13.0, cores=2, threads=2)  # others held 1.3 of 2
IDLE = LoadWindow(wall_s=10.0, cpu_s=19.0, others_cpu_s=0.2, cores=2, threads=2)

# the history table as it was before the load columns (an older tunelab's file)
OLD_SCHEMA = """CREATE TABLE history (key TEXT PRIMARY KEY, source TEXT NOT NULL, model TEXT, device TEXT,
tokens_per_s REAL, recorded_at TEXT)"""


def test_summary_json_carries_the_load_and_an_older_one_reads_as_unknown():
    summary = Summary(run="r", steps=3, load=BUSY, step_cost=StepCost(per_token_s=1e-5, load=IDLE))
    data = json.loads(json.dumps(summary.to_json()))
    assert data["load"]["others_share"] == 0.65 and data["load"]["contended"] is True
    back = Summary.from_json(data)
    assert back.load == BUSY and back.step_cost is not None and back.step_cost.load == IDLE
    old = Summary.from_json({"run": "r", "steps": 3, "step_cost": {"per_token_s": 1e-5}})
    assert old.load is None and old.step_cost is not None and old.step_cost.load is None


def test_a_metrics_row_without_the_load_fields_reads_them_as_none():
    row = MetricRow.from_json({"step": 1, "loss": 2.0, "tokens": 10})
    assert (row.cpu_s, row.others_share) == (None, None)
    assert MetricRow.from_json(MetricRow(step=2, cpu_s=1.5, others_share=0.25).to_json()).others_share == 0.25


def test_an_old_history_file_opens_with_the_load_columns_and_keeps_them(tmp_path):
    db = tmp_path / "history.db"
    with sqlite3.connect(db) as conn:
        conn.execute(OLD_SCHEMA)
        conn.execute("INSERT INTO history VALUES ('old', 'tunelab', 'm', 'cpu', 50.0, '2026-01-01')")
    [old] = history.load(db, everything=True)
    assert (old.others_share, old.slowdown, old.contended, old.time_spread) == (None, None, None, None)
    assert history.load_label(old) == "—"  # not measured: unknown, never idle
    history.record([history.HistoryRun(key="new", source="probe", tokens_per_s=9.0, time_spread=0.41,
                                       **history.load_fields(BUSY))], db)
    new = next(r for r in history.load(db, everything=True) if r.key == "new")
    assert new.contended is True and new.others_share == 0.65 and new.time_spread == 0.41
    assert new.slowdown == round(2.0 / 0.7, 3)  # 2 threads over the 0.7 cores others left
    assert history.load_label(new) == "contended ×2.9"
    assert history.load_label(history.HistoryRun(key="i", source="x", **history.load_fields(IDLE))) == "idle"


def _run_config(tmp_path) -> RunConfig:
    data = tmp_path / "d.json"
    data.write_text(json.dumps({s: [{"input": "a", "output": "A"}] for s in ("train", "validation", "test")}))
    return RunConfig(name="r", kind="finetune", experiment="e", experiment_dir=str(tmp_path),
                     model={"name": "tiny", "path": str(tmp_path / "model")}, dataset={"name": "d", "path": str(data)},
                     prompt="{input}", training={"lora_rank": 16, "batch_size": 4})


def test_from_run_dir_fills_the_load_from_summary_json(tmp_path):
    cfg = _run_config(tmp_path)
    row = history.from_run_dir(cfg, Summary(steps=10, tokens=1000, tokens_per_s=50.0, load=IDLE))
    assert (row.others_share, row.slowdown, row.contended) == (0.01, round(2 / 1.98, 3), False)
    unknown = history.from_run_dir(cfg, Summary(steps=10, tokens=1000, tokens_per_s=50.0))
    assert (unknown.others_share, unknown.slowdown, unknown.contended) == (None, None, None)


def _probe_result(load: LoadWindow | None, spread: float | None, rounds: int) -> ProbeResult:
    timings = [0.1, 0.141, 0.12]
    return ProbeResult(micro_batch=4, points=[ProbePoint(micro_batch=4, tokens=64, seconds=0.1, timings=timings,
                                                         median_s=0.12)],
                       tokens_per_s=640.0, per_token_s=None, fixed_s=None, peak_memory_gib=None, memory_kind=None,
                       device="cpu", cpu_threads=2, spread=spread, rounds=rounds, load=load, settled=False)


def test_the_probe_result_keeps_every_timing_its_spread_and_load(tmp_path):
    path = write_probe_results(tmp_path / "results.json", [("k", _probe_result(BUSY, 0.41, 3))])
    back = read_probe_results(path)["k"]
    assert back.points[0].timings == [0.1, 0.141, 0.12] and back.points[0].median_s == 0.12
    assert (back.spread, back.rounds, back.load, back.settled) == (0.41, 3, BUSY, False)
    old = ProbeResult.from_json({k: v for k, v in _probe_result(None, None, 1).to_json().items()
                                 if k not in ("spread", "rounds", "load", "settled")})
    assert (old.spread, old.rounds, old.load, old.settled) == (None, None, None, None)


def test_the_probe_says_one_line_for_a_contended_or_spread_shape_and_none_otherwise(tmp_path):
    shape = Shape("k", _run_config(tmp_path), ["r"])
    assert caveat(shape, _probe_result(BUSY, 0.41, 3)) == (
        "probe: tiny r16 bs4 timed under contention (others held 1.3 of 2 cores): ×2.9; repeated 3 times, "
        "spread 41 %")
    assert caveat(shape, _probe_result(IDLE, 0.3, 3)) == (
        "probe: tiny r16 bs4 timed with disagreeing steps; repeated 3 times, spread 30 %")
    assert caveat(shape, _probe_result(IDLE, 0.05, 1)) is None
    settled = _probe_result(BUSY, 0.41, 2)
    settled.settled = True  # the repeat agreed: the figure (the fastest step) is taken as it is
    assert caveat(shape, settled) is None
    assert caveat(shape, _probe_result(None, 0.1, 1)) is None


def test_timed_steps_keep_every_timing_and_their_spread():
    first = TimedSteps({4: [(0.2, 64.0), (0.1, 64.0)], 8: [(0.3, 128.0)]}, {4: None, 8: None}, BUSY)
    assert first.fastest() == {4: (64.0, 0.1, None), 8: (128.0, 0.3, None)}
    assert first.spread() == 1.0  # 0.2 / 0.1 − 1; one step at 8 has no spread
    both = first.then(TimedSteps({4: [(0.11, 64.0)], 8: [(0.33, 128.0)]}, {4: None, 8: None}, IDLE))
    assert [t for t, _ in both.steps[4]] == [0.2, 0.1, 0.11] and both.rounds == 2
    assert both.load == LoadWindow.combined([BUSY, IDLE])
    assert first.then(TimedSteps({4: [(0.1, 64.0)]}, {4: None}, None)).load is None  # unknown stays unknown


def test_a_gpu_run_is_never_contended_by_the_cpus_load(tmp_path):
    """Others held 1.5 of 2 cores beside a GPU run: its row records the share but no slowdown and no contention,
    and its speed is used as measured; a GPU row recorded contended before that rule is read the same way; a CPU
    row under the same load is still set apart and corrected."""
    from dataclasses import replace

    from tunelab.forecast.speedhistory import uncontended

    gpu_load = LoadWindow(wall_s=10.0, cpu_s=5.0, others_cpu_s=15.0, cores=2, threads=2, gpu=True)
    row = history.from_run_dir(_run_config(tmp_path), Summary(steps=10, tokens=1000, tokens_per_s=500.0,
                                                              device="NVIDIA H100 80GB HBM3", load=gpu_load))
    assert (row.others_share, row.slowdown, row.contended) == (0.75, 1.0, False)
    assert history.load_label(row) == "GPU; others 75% of CPUs"
    older = replace(row, contended=True, slowdown=4.0)  # as the history kept GPU rows before
    assert history.cpu_contended(older) is False and history.load_label(older) == "GPU; others 75% of CPUs"
    assert uncontended([older]) == ([older], "")  # its tokens/s as measured: no CPU slowdown applied
    cpu = replace(older, device="cpu")
    assert history.cpu_contended(cpu) is True
    [sped], note = uncontended([cpu])
    assert sped.tokens_per_s == 500.0 * 4.0 and "under contention" in note
