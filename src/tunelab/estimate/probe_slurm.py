"""`tunelab probe --executor slurm`: the probe as one short job on the runs' partition, so the measured speed and memory
are the jobs' device's, not the login node's; through the Executor interface. The job writes its results as JSON in
`<experiment>/probe/` and the coordinator records the rows: jobs never write the history (SQLite on a network filesystem
with writers on many nodes is fragile)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.estimate.probe import distinct_shapes, record_generation, to_history
from tunelab.execute.executor import Executor, JobKind
from tunelab.ledger import history
from tunelab.rundir.config import RunConfig
from tunelab.rundir.layout import PROBE_DIR, PROBE_RESULTS_FILE
from tunelab.rundir.probe import ProbeResult, read_probe_results

PROBE_TIME_LIMIT = "00:30:00"
POLL_S = 2.0


def read_results(path: Path) -> dict[str, ProbeResult]:
    try:
        return read_probe_results(path)
    except (OSError, ValueError) as exc:
        raise TunelabError(f"probe results unreadable ({type(exc).__name__}: {exc})", file=path) from None


def probe_on_slurm(runs: list[RunConfig], spec_path: Path, experiment_dir: Path, executor: Executor,
                   say: Callable[[str], None] = print, timeout_s: float = 3600) -> list[history.HistoryRun]:
    """Submit the probe job through `executor` (the Slurm one), wait for it, record its results in the history."""
    shapes = distinct_shapes(runs)
    if not shapes:
        return []
    probe_dir = experiment_dir / PROBE_DIR
    probe_dir.mkdir(parents=True, exist_ok=True)
    results = probe_dir / PROBE_RESULTS_FILE
    results.unlink(missing_ok=True)
    command = f'"${{TUNELAB_PYTHON:-{sys.executable}}}" -m tunelab probe "{spec_path}" --results "{results}"'
    script = executor.side_job_script(shapes[0].cfg, JobKind.PROBE, probe_dir, command, PROBE_TIME_LIMIT)
    job = executor.submit(script)
    say(f"probe job {job} submitted ({len(shapes)} shape(s)); waiting for it …")
    _wait(executor, job, timeout_s)
    if not results.is_file():
        tail = executor.output(probe_dir, JobKind.PROBE, job).strip().splitlines()[-5:]
        raise TunelabError(f"probe job {job} ended without results" + (": " + " | ".join(tail) if tail else ""),
                           file=probe_dir)
    measured = read_results(results)
    rows = [to_history(s, measured[s.key], spec_path) for s in shapes if s.key in measured]
    history.record(rows)
    for shape in shapes:
        if shape.key in measured:
            record_generation(shape, measured[shape.key], spec_path)
    return rows


def _wait(executor: Executor, job: str, timeout_s: float, poll_s: float = POLL_S) -> None:
    """Until the job has ended: a state outside the active ones (job_states.ACTIVE_STATES, through JobInfo.ended;
    a job squeue no longer lists is UNSEEN, ended). A poll that could say nothing of the job concludes nothing."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        info = (executor.poll([job]) or {}).get(job)
        if info is not None and info.ended:
            return
        time.sleep(poll_s)
    raise TunelabError(f"probe job {job} still queued or running after {timeout_s:.0f} s (cancel it through the "
                       "scheduler to stop it)")
