"""The rows a run was recorded under before identities (rundir/identity.py), keyed by its absolute directory: a run
recorded under its identity drops them, so an older history needs no other migration."""

from __future__ import annotations

from pathlib import Path

from tunelab.ledger.generation import TABLE as GENERATION
from tunelab.ledger.history import connect, history_path
from tunelab.ledger.predictions import PredictedPart
from tunelab.rundir.scores import TaskScores, task_dir


def directory_keys(run_dir: Path, scores: list[TaskScores]) -> dict[str, list[str]]:
    """{table: the keys the run's rows had there before identities}."""
    return {"history": [str(run_dir)],
            "predictions": [f"{run_dir}#{part}" for part in PredictedPart],
            GENERATION: [f"eval:{task_dir(run_dir, s.label, s.task)}" for s in scores]}


def drop_directory_rows(run_dir: Path, scores: list[TaskScores], path: Path | None = None) -> None:
    """Delete the run's rows keyed by its directory (nothing without a history file)."""
    p = path or history_path()
    if not p.is_file():
        return
    with connect(p) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table, keys in directory_keys(run_dir, scores).items():
            if table in tables and keys:
                conn.executemany(f"DELETE FROM {table} WHERE key = ?", [(k,) for k in keys])
