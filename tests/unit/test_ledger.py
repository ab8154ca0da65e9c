"""The ledger ingests what run directories hold (real SQLite, files as jobs write them)."""

import json
import sqlite3
import subprocess
import sys

import pytest

from tunelab import fsutil
from tunelab.errors import TunelabError
from tunelab.fsutil import atomic_write_json
from tunelab.ledger import history
from tunelab.ledger import store as ledger
from tunelab.rundir.experiment import load_runs, training_state
from tunelab.scaffold.write import scaffold


def _fake_outputs(run_dir, state="completed", pid=None, truncated=False):
    rows = [{"step": s, "epoch": s / 40, "loss": 2.0 / s, "val_loss": None, "lr": 1e-3, "tokens": 100 * s,
             "nonpad_tokens": 90 * s, "tokens_per_s": 1000.0, "peak_memory_gib": 0.5, "elapsed_s": s / 10}
            for s in (10, 20, 30, 40)]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if truncated:
        text += '{"step": 50, "epoch": 1.2'  # a job killed mid-write
    (run_dir / "metrics.jsonl").write_text(text)
    atomic_write_json(run_dir / "status.json", {"state": state, "pid": pid or 1, "host": "elsewhere"})
    if state == "completed":
        atomic_write_json(run_dir / "summary.json", {"steps": 40, "final_loss": 0.05, "tokens_per_s": 1000.0,
                                                      "peak_memory_gib": 0.5})


def test_ingest_is_idempotent_and_tolerates_truncated_metrics(write_spec):
    spec = write_spec()
    scaffold(spec)
    exp = spec.parent
    runs = load_runs(exp)
    _fake_outputs(runs[0].run_dir, truncated=True)
    for _ in range(2):
        states = ledger.ingest_all(exp, runs)
    assert states == {"tiny_r4": "completed", "tiny_r8": "pending", "tiny_base": "pending"}
    rows = ledger.query(exp, "SELECT run, step, loss FROM metrics ORDER BY step")
    assert [r["step"] for r in rows] == [10, 20, 30, 40]
    run = ledger.query(exp, "SELECT * FROM runs WHERE name = 'tiny_r4'")[0]
    assert run["final_loss"] == 0.05 and run["steps"] == 40
    assert json.loads(run["factors"])["lora_rank"] == 4
    assert ledger.query(exp, "PRAGMA journal_mode")[0]["journal_mode"] == "delete"


def test_both_ledgers_use_a_rollback_journal_safe_on_network_filesystems(tmp_path):
    """WAL needs shared memory that NFS/Lustre/GPFS do not keep coherent across hosts: never WAL."""
    old = tmp_path / "exp"
    old.mkdir()
    with sqlite3.connect(old / "tunelab.db") as conn:  # a ledger left in WAL mode by an earlier tunelab
        assert conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    with ledger.connect(old) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 10_000  # waits for a writer, not fails
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert not (old / "tunelab.db-wal").exists() and not (old / "tunelab.db-shm").exists()
    with history.connect(tmp_path / "h" / "history.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 10_000


def test_a_locked_ledger_is_an_error_naming_the_file(tmp_path, monkeypatch):
    """A real lock: another connection holds an exclusive transaction while tunelab wants the ledger."""
    monkeypatch.setattr(fsutil, "SQLITE_TIMEOUT_S", 0.2, raising=False)
    ledger.query(tmp_path, "SELECT 1")  # creates the ledger
    holder = sqlite3.connect(tmp_path / "tunelab.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(TunelabError, match="locked") as exc:
            ledger.query(tmp_path, "SELECT count(*) FROM runs")
        assert exc.value.file == str(tmp_path / "tunelab.db")
    finally:
        holder.rollback()
        holder.close()
    assert ledger.query(tmp_path, "SELECT count(*) AS n FROM runs") == [{"n": 0}]  # usable once released


def test_a_corrupted_middle_metrics_line_stops_ingest_naming_file_and_line(write_spec):
    scaffold(spec := write_spec())
    runs = load_runs(spec.parent)
    _fake_outputs(runs[0].run_dir)
    metrics = runs[0].run_dir / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    lines[1] = lines[1][:25] + "\n"  # a line cut in the middle of the file: not a kill mid-write
    metrics.write_text("".join(lines))
    with pytest.raises(TunelabError, match="line 2") as exc:
        ledger.ingest_all(spec.parent, runs)
    assert exc.value.file == str(metrics)


def test_dead_process_with_running_status_is_interrupted(write_spec):
    import socket

    scaffold(spec := write_spec())
    run_dir = load_runs(spec.parent)[0].run_dir
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    atomic_write_json(run_dir / "status.json", {"state": "running", "pid": dead.pid, "host": socket.gethostname()})
    assert training_state(run_dir) == "interrupted"
    atomic_write_json(run_dir / "status.json", {"state": "completed"})
    assert training_state(run_dir) == "pending"  # "completed" without summary.json is not done


def _task_scores(cfg, label, task, metrics, primary, epoch=None):
    from tunelab.evaluate.scores import TaskScores, task_dir, write_scores

    s = TaskScores(run=cfg.name, kind=cfg.kind, label=label, epoch=epoch, task=task, builtin=task,
                   dataset="caps", split="test", metrics=metrics, primary_metric=primary, score=metrics[primary],
                   samples=40, log="x.eval", model_path="/m", duration_s=1.5, evaluated_at="2026-01-01T00:00:00+00:00")
    write_scores(task_dir(cfg.run_dir, label, task), s)


def test_control_is_completed_once_every_task_is_scored(write_spec):
    scaffold(spec := write_spec(eval={"tasks": ["exact_match", {"name": "pick", "builtin": "choice"}]}))
    runs = load_runs(spec.parent)
    ctl = runs[-1]
    assert ctl.kind == "control"
    _task_scores(ctl, "base", "exact_match", {"accuracy": 0.25, "stderr": 0.1}, "accuracy")
    assert ledger.ingest_all(spec.parent, runs)["tiny_base"] == "pending"  # one task of two
    _task_scores(ctl, "base", "pick", {"accuracy": 0.5, "brier": 0.3, "roc_auc": None}, "accuracy")
    assert ledger.ingest_all(spec.parent, runs)["tiny_base"] == "completed"
    ev = ledger.query(spec.parent, "SELECT task, metric, value, is_primary, samples, log_path FROM evals "
                                   "ORDER BY task, metric")
    assert [(e["task"], e["metric"], e["value"], e["is_primary"]) for e in ev] == [
        ("exact_match", "accuracy", 0.25, 1), ("exact_match", "stderr", 0.1, 0),
        ("pick", "accuracy", 0.5, 1), ("pick", "brier", 0.3, 0), ("pick", "roc_auc", None, 0)]
    assert ev[0]["samples"] == 40 and ev[0]["log_path"] == str(ctl.run_dir / "eval" / "base" / "exact_match" / "x.eval")


def test_an_old_ledger_gets_the_per_metric_evals_table(write_spec):
    scaffold(spec := write_spec())
    exp = spec.parent
    with sqlite3.connect(exp / "tunelab.db") as conn:  # the evals table of earlier versions
        conn.execute("CREATE TABLE evals (run TEXT NOT NULL, label TEXT NOT NULL, epoch INTEGER, task TEXT NOT NULL, "
                     "split TEXT, metric TEXT, score REAL, PRIMARY KEY (run, label, task))")
        conn.execute("INSERT INTO evals VALUES ('tiny_base', 'base', NULL, 'exact_match', 'test', 'accuracy', 0.1)")
    runs = load_runs(exp)
    _task_scores(runs[-1], "base", "exact_match", {"accuracy": 0.75}, "accuracy")
    ledger.ingest_all(exp, runs)
    rows = ledger.query(exp, "SELECT run, metric, value, is_primary FROM evals")
    assert rows == [{"run": "tiny_base", "metric": "accuracy", "value": 0.75, "is_primary": 1}]
