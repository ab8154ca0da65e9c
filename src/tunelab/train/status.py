"""Deprecated: the run directory's names and status.json live in tunelab.rundir. This shim returns
status.json as a dict, as before, until every reader uses tunelab.rundir's typed records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.rundir import status as _status
from tunelab.rundir.layout import (  # noqa: F401  (re-exported)
    CHECKPOINTS_DIR,
    COMPLETED,
    FAILED,
    INTERRUPTED,
    METRICS_FILE,
    PACKING_FILE,
    PENDING,
    RUNNING,
    STATUS_FILE,
    SUMMARY_FILE,
    TRAINER_STATE_DIR,
)
from tunelab.rundir.status import now_iso  # noqa: F401


def read_status(run_dir: str | Path) -> dict[str, Any]:
    return _status.read_status(run_dir).to_json()


def write_status(run_dir: str | Path, **fields: Any) -> dict[str, Any]:
    return _status.write_status(run_dir, **fields).to_json()
