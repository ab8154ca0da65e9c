"""An evaluation's time is recorded with what it covered and the load it ran under (ledger/predictions.py
`eval_records`): a real evaluation's scores.json carries the machine's load over its time, others' seconds at
least what a process outside the evaluation's tree burned meanwhile (read from the kernel's own accounting); the
history's evaluation row is contended when its tasks' load says so; and an evaluation that scored fewer targets or
samples than run.yaml priced (a plan made here: `eval_targets` × `eval_samples`) is recorded as partial, with how
many of how many, and left out of what the corrections read until the complete one replaces it; a run.yaml that
does not say what it priced records none."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from tunelab.host.cpuload import LoadWindow, on_gpu
from tunelab.ledger import predictions
from tunelab.ledger.predictions import PredictedPart
from tunelab.rundir.config import RunConfig
from tunelab.rundir.experiment import load_runs
from tunelab.rundir.scores import TaskScores, read_scores, task_dir, write_scores
from tunelab.scaffold.write import scaffold

TICK = 0.02  # /proc counts 10 ms ticks: two of slack per reading
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from hogs import hogs  # noqa: E402  (benchmarks/hogs.py: outside this process's tree)


def _cpu_s(pid: int) -> float:
    """A process's user + system seconds as the kernel accounts them (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module")
def planned(spec_in, tmp_path_factory) -> list[RunConfig]:
    """One experiment planned here: a run of 2 epochs, each evaluated (eval.epochs all) on 2 tasks of 5 samples
    (limit), and its control; scaffolded once for the tests below (its own history)."""
    root = tmp_path_factory.mktemp("planned")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNELAB_HISTORY", str(root / "history.db"))
        spec = spec_in(root / "exp", factors={"lora_rank": [4]}, training={"epochs": 2},
                       eval={"epochs": "all", "limit": 5,
                             "tasks": ["exact_match", {"name": "pick", "builtin": "choice"}]})
        scaffold(spec)
    return load_runs(spec.parent)


@pytest.fixture
def outside_hog():
    """One busy process that is not a descendant of this one (benchmarks/hogs.py: started by a go-between), so the
    evaluation's tree does not hold it. Killed after the test; it stops by itself after 120 s."""
    with hogs(1, max_s=120) as [hog]:
        yield hog.pid


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="Linux /proc")
def test_a_real_evaluation_keeps_its_load_and_is_recorded_complete(planned, tmp_path, monkeypatch, outside_hog):
    """A control planned here and evaluated for real (its 2 tasks × 5 samples) beside a busy process
    outside its tree: each task's scores.json keeps the load over its time, and the evaluation's row is complete —
    what the evaluation scored is what the plan priced — and contended as its tasks' loads together say."""
    from tunelab.evaluate.runner import evaluate_run

    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))
    ctl = next(r for r in planned if r.kind == "control")
    hog_before, t0 = _cpu_s(outside_hog), time.monotonic()
    scores = evaluate_run(ctl)
    hog_s, wall_s = _cpu_s(outside_hog) - hog_before, time.monotonic() - t0
    for s in scores:
        load = s.load
        assert load is not None and load.gpu is on_gpu()
        assert load.wall_s == pytest.approx(s.duration_s, abs=0.05)  # over the time the task measured
        # the hog's seconds inside the window: its seconds over the whole call less one core for the time outside it
        assert load.others_cpu_s >= hog_s - (wall_s - load.wall_s) - 2 * TICK
        assert load.cpu_s > 0  # the evaluation's own (model load, generation, scoring)
    assert [s.load for s in read_scores(ctl.run_dir)] == [LoadWindow.from_json(s.load.to_json()) for s in scores
                                                          if s.load]  # scores.json keeps it (to the ms)
    [row] = predictions.eval_records(ctl, scores, None)
    assert ctl.estimate is not None and ctl.estimate.eval_samples
    assert (row.partial, row.targets_done, row.targets_predicted) == (False, 1, 1)
    assert row.samples_done == row.samples_predicted == ctl.estimate.eval_samples == sum(s.samples for s in scores)
    combined = LoadWindow.combined([s.load for s in scores if s.load])
    assert combined is not None and row.contended is combined.contended


def _scores(cfg: RunConfig, label: str, task: str, builtin: str, samples: int, load: LoadWindow | None) -> None:
    write_scores(task_dir(cfg.run_dir, label, task), TaskScores(
        run=cfg.name, kind=cfg.kind, label=label, epoch=int(label.split("_")[1]), task=task, builtin=builtin,
        metrics={"accuracy": 0.5}, primary_metric="accuracy", score=0.5, samples=samples, log="x.eval",
        model_path="/m", duration_s=2.0, device="cpu", concurrent=1, evaluated_at="2026-01-01T00:00:00+00:00",
        load=load))


IDLE = LoadWindow(wall_s=2.0, cpu_s=3.8, others_cpu_s=0.1, cores=2, threads=2)
BUSY = LoadWindow(wall_s=2.0, cpu_s=2.0, others_cpu_s=3.0, cores=2, threads=2)  # others held 1.5 of 2 cores


def test_an_evaluation_is_partial_until_every_priced_target_and_sample_is_scored(planned, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))
    cfg = next(r for r in planned if r.kind == "finetune")
    est = cfg.estimate
    assert est is not None and est.eval_source and est.eval_raw_s
    assert (est.eval_targets, est.eval_samples) == (2, 5 + 5)  # epochs 0 and 1; the limit's 5 rows × 2 tasks
    key = f"{cfg.run_dir}#{PredictedPart.EVAL}"

    def recorded() -> predictions.PredictionRecord:
        predictions.record(predictions.eval_records(cfg, read_scores(cfg.run_dir), None))
        assert [r.key for r in predictions.load()].count(key) <= 1
        [row] = [r for r in predictions.load(everything=True) if r.key == key]
        return row

    _scores(cfg, "epoch_0", "exact_match", "exact_match", 5, IDLE)
    _scores(cfg, "epoch_0", "pick", "choice", 5, IDLE)
    one = recorded()  # one target of two
    assert (one.partial, one.targets_done, one.targets_predicted, one.samples_done, one.samples_predicted) == (
        True, 1, 2, 10, 20)
    assert one.measured_s == 4.0 and one.contended is False
    assert key not in {r.key for r in predictions.load()}  # what corrections read: complete evaluations only

    _scores(cfg, "epoch_1", "exact_match", "exact_match", 5, IDLE)
    _scores(cfg, "epoch_1", "pick", "choice", 3, BUSY)  # every target, but 3 of the task's 5 samples
    short = recorded()
    assert (short.partial, short.targets_done, short.samples_done, short.samples_predicted) == (True, 2, 18, 20)
    assert short.contended is True  # the tasks' load together: others held 3.4 of 8 core-seconds (×1.7)
    assert key not in {r.key for r in predictions.load()}

    _scores(cfg, "epoch_1", "pick", "choice", 5, None)  # complete; one task's load not measured
    whole = recorded()
    assert (whole.partial, whole.targets_done, whole.samples_done) == (False, 2, 20)
    assert whole.contended is None  # unknown, never idle
    assert whole.predicted_s == est.eval_raw_s and whole.measured_s == 8.0
    assert [r.key for r in predictions.load()].count(key) == 1  # the same row, now complete, is read

    # a run.yaml planned before eval_targets: its evaluation's time cannot be told complete from partial
    old = cfg.model_copy(update={"estimate": est.model_copy(update={"eval_targets": None, "eval_samples": None})})
    assert predictions.eval_records(old, read_scores(cfg.run_dir), None) == []


def test_an_older_predictions_table_gains_the_coverage_columns_and_reads_complete(tmp_path):
    import sqlite3

    db = tmp_path / "history.db"
    with sqlite3.connect(db) as conn:  # the table as tunelab wrote it before coverage was recorded
        conn.execute("CREATE TABLE predictions (key TEXT PRIMARY KEY, part TEXT NOT NULL, device TEXT, source TEXT, "
                     "predicted_s REAL, measured_s REAL, contended INTEGER, experiment TEXT, run TEXT, "
                     "recorded_at TEXT)")
        conn.execute("INSERT INTO predictions VALUES ('r#eval', 'eval', 'cpu', 'measured', 10, 12, 0, 'e', 'r', "
                     "'2026-01-01')")
    [old] = predictions.load(db)
    assert (old.partial, old.targets_done, old.samples_predicted) == (None, None, None)
    predictions.record([predictions.PredictionRecord(key="n#eval", part=PredictedPart.EVAL, device="cpu",
                                                     source="measured", predicted_s=10, measured_s=3, partial=True,
                                                     targets_done=1, targets_predicted=3)], db)
    assert [r.key for r in predictions.load(db)] == ["r#eval"]
    assert {r.key: r.partial for r in predictions.load(db, everything=True)} == {"r#eval": None, "n#eval": True}
