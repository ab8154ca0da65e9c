"""`tunelab probe --executor slurm`: the probe as one short Slurm job on the partition the runs will use, so
the measured speed and memory are those of the jobs' device, not of the login node.

The job runs `tunelab probe SPEC --results FILE`: it measures every shape and writes the results as JSON in
`<experiment>/probe/`, nothing else (jobs never write the history: a SQLite file on a network filesystem
with writers on many nodes is fragile). The coordinator waits for the job, then records the rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tunelab.ledger import history
from tunelab.errors import TunelabError
from tunelab.estimate.probe import distinct_shapes, to_history
from tunelab.fsutil import atomic_write_text
from tunelab.rundir.config import RunConfig
from tunelab.rundir.layout import PROBE_DIR, PROBE_RESULTS_FILE
from tunelab.rundir.probe import ProbeResult, read_probe_results

PROBE_TIME_LIMIT = "00:30:00"
POLL_S = 2.0
ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"}


def read_results(path: Path) -> dict[str, ProbeResult]:
    try:
        return read_probe_results(path)
    except (OSError, ValueError) as exc:
        raise TunelabError(f"probe results unreadable ({type(exc).__name__}: {exc})", file=path) from None


def probe_script(spec_path: Path, cfg: RunConfig, probe_dir: Path, results: Path, python: str) -> str:
    from tunelab.execute.slurm_jobs import sbatch_options

    keep = ("--account", "--partition", "--qos", "--constraint", "--cpus-per-task", "--mem", "--gres")
    opts = [o for o in sbatch_options(cfg, "eval") if o.startswith(keep)]
    opts = [f"--job-name=tl-{cfg.experiment}-probe"[:120], f"--chdir={probe_dir}",
            f"--output={probe_dir}/slurm-probe-%j.out", f"--time={PROBE_TIME_LIMIT}", "--nodes=1", "--ntasks=1",
            *opts]
    lines = ["#!/usr/bin/env bash", f"# tunelab probe of {spec_path}: a few real steps of each run shape",
             *(f"#SBATCH {o}" for o in opts), "set -euo pipefail",
             'export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"',
             f'exec "${{TUNELAB_PYTHON:-{python}}}" -m tunelab probe "{spec_path}" --results "{results}"']
    return "\n".join(lines) + "\n"


def probe_on_slurm(runs: list[RunConfig], spec_path: Path, experiment_dir: Path,
                   say: Callable[[str], None] = print, timeout_s: float = 3600) -> list[history.HistoryRun]:
    """Submit the probe job, wait for it, record its results in the history."""
    import sys

    from tunelab.execute.slurm_cli import SlurmExecutor

    shapes = distinct_shapes(runs)
    if not shapes:
        return []
    probe_dir = experiment_dir / PROBE_DIR
    probe_dir.mkdir(parents=True, exist_ok=True)
    results = probe_dir / PROBE_RESULTS_FILE
    results.unlink(missing_ok=True)
    script = probe_dir / "probe.sbatch"
    atomic_write_text(script, probe_script(spec_path, shapes[0].cfg, probe_dir, results, sys.executable))
    executor = SlurmExecutor()
    job = executor.submit(script)
    say(f"probe job {job} submitted ({len(shapes)} shape(s)); waiting for it …")
    _wait(executor, job, timeout_s)
    if not results.is_file():
        logs = sorted(probe_dir.glob(f"slurm-probe-{job}.out"))
        tail = logs[0].read_text(errors="replace").strip().splitlines()[-5:] if logs else []
        raise TunelabError(f"probe job {job} ended without results" + (": " + " | ".join(tail) if tail else ""),
                           file=probe_dir)
    measured = read_results(results)
    rows = [to_history(s, measured[s.key], spec_path) for s in shapes if s.key in measured]
    history.record(rows)
    return rows


def _wait(executor, job: str, timeout_s: float) -> None:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        queue = executor.queue()
        state = (queue or {}).get(job, ("", ""))[0]
        if queue is not None and state not in ACTIVE:
            return
        time.sleep(POLL_S)
    raise TunelabError(f"probe job {job} still queued or running after {timeout_s:.0f} s (scancel {job} to stop it)")
