"""The ledger ingests what run directories hold (real SQLite, files as jobs write them)."""

import json
import subprocess
import sys

from tunelab import ledger
from tunelab.experiment import load_runs, training_state
from tunelab.fsutil import atomic_write_json
from tunelab.scaffold import scaffold


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
    assert ledger.query(exp, "PRAGMA journal_mode")[0]["journal_mode"] == "wal"


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


def test_control_is_completed_once_scored(write_spec):
    scaffold(spec := write_spec())
    runs = load_runs(spec.parent)
    ctl = runs[-1]
    assert ctl.kind == "control"
    d = ctl.run_dir / "eval" / "base"
    d.mkdir(parents=True)
    atomic_write_json(d / "scores.json", {"run": ctl.name, "label": "base", "epoch": None, "task": "exact_match",
                                          "split": "test", "metric": "accuracy", "score": 0.0, "samples": 40,
                                          "correct": 0, "log": "x.eval"})
    assert ledger.ingest_all(spec.parent, runs)["tiny_base"] == "completed"
    ev = ledger.query(spec.parent, "SELECT * FROM evals")
    assert ev[0]["score"] == 0.0 and ev[0]["samples"] == 40
