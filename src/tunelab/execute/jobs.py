"""Views of the ledger's `jobs` table (every job of every executor): the newest train/eval job of each
run, and which jobs are still active (queued or running) or not yet judged."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunelab import ledger
from tunelab.execute.failures import ACTIVE_STATES, base_state


@dataclass
class RunJobs:
    train: dict | None
    eval: dict | None


def all_jobs(exp: Path) -> list[dict]:
    return ledger.query(exp, "SELECT * FROM jobs ORDER BY id")


def latest_jobs(exp: Path) -> dict[str, RunJobs]:
    out: dict[str, RunJobs] = {}
    for j in all_jobs(exp):
        rj = out.setdefault(j["run"], RunJobs(None, None))
        setattr(rj, j["kind"], j)
    return out


def is_active(job: dict | None) -> bool:
    """Queued or running, as last seen (what max_queued counts)."""
    return job is not None and base_state(job["state"]) in ACTIVE_STATES


def is_open(job: dict) -> bool:
    """Not judged yet: active, or ended without a verdict (waiting for accounting). --wait waits for these."""
    return job["failure"] is None
