"""status.json of a run: replaced atomically, so a reader never sees half of it."""

from __future__ import annotations

import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunelab.fsutil import atomic_write_json, read_json

STATUS_FILE = "status.json"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
PACKING_FILE = "packing.json"
CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE_DIR = "trainer_state"

# Run states, as files and ledger show them.
PENDING, RUNNING, COMPLETED, FAILED, INTERRUPTED = "pending", "running", "completed", "failed", "interrupted"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_status(run_dir: str | Path) -> dict[str, Any]:
    return read_json(Path(run_dir) / STATUS_FILE, default={}) or {}


def write_status(run_dir: str | Path, **fields: Any) -> dict[str, Any]:
    """Merge fields into status.json (atomic replace)."""
    status = read_status(run_dir)
    status.update(fields)
    status["updated_at"] = now_iso()
    status["host"] = socket.gethostname()  # with the pid below: a run resumed on another node names it
    status["pid"] = os.getpid()
    atomic_write_json(Path(run_dir) / STATUS_FILE, status)
    return status
