"""What the ledger last ingested of each run: the stamps (mtime_ns, size, inode: an atomic replace changes the inode) of
the files read and of the config, so unchanged runs are not read again. Taken before reading and stored in the same
transaction, so a change or kill during ingest means the next reads the run again."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from tunelab.rundir.config import RunConfig
from tunelab.rundir.layout import EVAL_DIR, METRICS_FILE, SCORES_FILE, STATUS_FILE, SUMMARY_FILE

SCHEMA = """
CREATE TABLE IF NOT EXISTS ingested (   -- per run, what its last ingest read
    run TEXT PRIMARY KEY,
    stamps TEXT NOT NULL                 -- JSON: run_stamps()
);
"""

INGESTED_FILES = (STATUS_FILE, SUMMARY_FILE, METRICS_FILE)  # and every eval/<label>/<task>/scores.json


@dataclass(frozen=True)
class Ingested:
    """A run as the ledger last ingested it: its stamps then and the state it recorded."""

    stamps: str
    state: str


def _stamp(path: Path) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size, st.st_ino]


def run_stamps(cfg: RunConfig, config_json: str) -> str:
    """The stamps of what ingest reads of a run (its files, and run.yaml as the caller holds it), as one text."""
    run_dir = cfg.run_dir
    files = {name: _stamp(run_dir / name) for name in INGESTED_FILES}
    for path in sorted((run_dir / EVAL_DIR).glob(f"*/*/{SCORES_FILE}")):
        files[str(path.relative_to(run_dir))] = _stamp(path)
    config = hashlib.sha256(config_json.encode()).hexdigest()
    return json.dumps({"config": config, "files": files}, sort_keys=True)


def read_ingested(conn: sqlite3.Connection) -> dict[str, Ingested]:
    """run -> what its last ingest stamped and recorded."""
    rows = conn.execute("SELECT i.run, i.stamps, r.state FROM ingested i JOIN runs r ON r.name = i.run")
    return {r[0]: Ingested(r[1], r[2]) for r in rows.fetchall()}


def write_stamps(conn: sqlite3.Connection, run: str, stamps: str) -> None:
    conn.execute("INSERT OR REPLACE INTO ingested (run, stamps) VALUES (?, ?)", (run, stamps))
