"""A run's history rows are keyed by its measurement, not its directory (rundir/identity.py): a copy of a finished
run ingested again is the same measurement (one row); the copy trained again is a new one (its own row, the
original's kept); a history an earlier tunelab keyed by directory keeps one row per run once the run is ingested
again; a run whose status.json does not say when it first started keeps its directory as its key.
The whole user path (mv, cp -r, `tunelab run`, `tunelab report`) on real runs: tests/e2e/test_moved_runs_recorded_once.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tunelab.ledger import history, predictions, store
from tunelab.ledger.predictions import PredictedPart, PredictionRecord
from tunelab.rundir.config import RunConfig, save_run_config
from tunelab.rundir.experiment import load_runs
from tunelab.rundir.identity import training_key
from tunelab.rundir.layout import STATUS_FILE
from tunelab.rundir.status import write_status
from tunelab.rundir.summary import Summary, write_summary


def _finished(exp: Path, first_started_at: str | None = "2026-11-27T00:00:00+00:00") -> RunConfig:
    """A fine-tuned run of `exp` that completed: run.yaml, status.json as its job wrote it, summary.json."""
    data = exp / "d.json"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text(json.dumps({s: [{"input": "a", "output": "A"}] for s in ("train", "validation", "test")}))
    cfg = RunConfig(name="r", kind="finetune", experiment="e", experiment_dir=str(exp),
                    model={"name": "tiny", "path": str(exp / "model")}, dataset={"name": "d", "path": str(data)},
                    prompt="{input}", training={"lora_rank": 16, "batch_size": 4})
    save_run_config(cfg)
    _trained(cfg.run_dir, first_started_at)
    return cfg


def _trained(run_dir: Path, first_started_at: str | None) -> None:
    """What a job (tunelab run --force clears status.json first) leaves: a new status.json and summary.json."""
    (run_dir / STATUS_FILE).unlink(missing_ok=True)
    starts = {"first_started_at": first_started_at} if first_started_at else {}
    write_status(run_dir, run="r", state="completed", **starts)
    write_summary(run_dir, Summary(run="r", state="completed", steps=10, tokens=1000, tokens_per_s=50.0))


def _ingest(exp: Path) -> list[history.HistoryRun]:
    store.ingest_all(exp, load_runs(exp))
    return history.load(everything=True)


def test_a_copy_is_the_same_measurement_until_it_is_trained_again(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))
    a, b = tmp_path / "A", tmp_path / "B"
    _finished(a)
    [row] = _ingest(a)
    assert row.key.startswith("e/runs/r@") and row.origin_where == str(a / "runs" / "r" / "summary.json")
    shutil.copytree(a, b)
    [again] = _ingest(b)  # the same measurement from another directory: its row replaced
    assert again.key == row.key and again.origin_where == str(b / "runs" / "r" / "summary.json")
    _trained(b / "runs" / "r", "2026-11-27T01:00:00+00:00")  # the copy trained again: a new measurement
    rows = _ingest(b)
    assert len(rows) == 2 and len({r.key for r in rows}) == 2 and {r.run for r in rows} == {"r"}


def test_rows_an_earlier_tunelab_keyed_by_directory_are_replaced_and_a_run_without_marks_keeps_them(
        tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))
    cfg = _finished(tmp_path / "A")
    old = str(cfg.run_dir)
    history.record([history.HistoryRun(key=old, source="tunelab", experiment="e", run="r", tokens_per_s=50.0)])
    predictions.record([PredictionRecord(key=f"{old}#{PredictedPart.TRAIN}", part=PredictedPart.TRAIN,
                                         device="cpu", source="timed", predicted_s=10.0, measured_s=12.0, run="r")])
    assert [r.key for r in _ingest(tmp_path / "A")] == [training_key(cfg)] != [old]
    assert predictions.load() == []  # its check under the directory went with it (run.yaml predicted none here)

    legacy = _finished(tmp_path / "L", first_started_at=None)  # status.json from before the first start was kept
    store.ingest_all(tmp_path / "L", [legacy])
    assert str(legacy.run_dir) in {r.key for r in history.load(everything=True)}
