"""An experiment directory on disk: its runs and each run's state, judged from the run's own files, never from an exit
code alone (a job can exit non-zero after training finished, or die without a word)."""

from __future__ import annotations

import json
import os
import re
import socket
import time
from datetime import datetime
from pathlib import Path

from pydantic import ValidationError

from tunelab.errors import NoSpaceError, TunelabError
from tunelab.fsutil import atomic_write_json, read_json
from tunelab.host.process import alive
from tunelab.rundir import layout
from tunelab.rundir.config import RUN_FILE, RunConfig, load_run_config
from tunelab.rundir.metrics import MetricRow
from tunelab.rundir.status import Status, read_status

SPEC_FILE = "experiment.yaml"
LEDGER_FILE = "tunelab.db"


RUNS_CACHE = ".runs-cache.json"


def _load_configs(exp: Path, paths: list[Path]) -> list[RunConfig]:
    """Parse each run.yaml, reusing the parse of files unchanged since (same size and mtime): YAML parsing is what makes
    `status` slow on a large sweep. Each run is placed where its run.yaml is: the directory may have moved."""
    cache_path = exp / RUNS_CACHE
    cache = read_json(cache_path, default={}) or {}
    fresh: dict[str, dict] = {}
    runs = []
    for p in paths:
        stat = p.stat()
        key, stamp = str(p.relative_to(exp)), [stat.st_mtime_ns, stat.st_size]
        entry = cache.get(key)
        if entry and entry.get("stamp") == stamp:
            try:
                runs.append(RunConfig.model_validate(entry["data"]).located(p.parent))
                fresh[key] = entry
                continue
            except ValidationError:
                pass
        cfg = load_run_config(p)
        runs.append(cfg)
        fresh[key] = {"stamp": stamp, "data": cfg.model_dump(mode="json")}
    if fresh != cache:
        try:
            atomic_write_json(cache_path, fresh, durable=False)
        except (OSError, NoSpaceError):
            pass  # a read-only (or full) experiment dir still works, only slower
    return runs


def load_runs(experiment_dir: str | Path) -> list[RunConfig]:
    """All runs of a scaffolded experiment: fine-tuned, then controls, then eval-only runs (each by name)."""
    exp = Path(experiment_dir)
    if not exp.is_dir():
        raise TunelabError("experiment directory not found", file=exp)
    paths = [p for kind_dir in ("runs", "controls", "eval_only")
             for p in sorted((exp / kind_dir).glob(f"*/{RUN_FILE}"), key=natural_key)]
    if not paths:
        raise TunelabError("no runs here: run `tunelab scaffold experiment.yaml` first", file=exp)
    return _load_configs(exp, paths)  # each placed where its run.yaml is (RunConfig.located): moved or copied whole


def natural_key(path: Path) -> list:
    """Sort run names as people read them: r4 before r16."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.parent.name)]


def select_runs(runs: list[RunConfig], names: list[str] | None) -> list[RunConfig]:
    if not names:
        return runs
    known = {r.name for r in runs}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise TunelabError(f"unknown run(s) {unknown}; known: {sorted(known)}")
    return [r for r in runs if r.name in names]


# A `running` status from another host that has not been rewritten for this long (or for 3 of the run's
# recent logging intervals, if longer) is from a job that is gone.
STALE_AFTER_S = 600.0


def _running_alive(run_dir: Path, status: Status) -> bool:
    """Is the job that wrote this `running` status alive? On this host its pid says; from another only a heartbeat can:
    silence longer than max(STALE_AFTER_S, 3 × the longest recent gap between metrics rows) means gone, by the newer of
    mtime and `updated_at` (one skewed clock cannot kill a live job)."""
    if status.host == socket.gethostname():
        return alive(status.pid) if status.pid else True  # (no pid recorded: nothing says it is gone)
    stamps = []
    try:
        stamps.append((run_dir / layout.STATUS_FILE).stat().st_mtime)
    except OSError:
        pass
    try:
        stamps.append(datetime.fromisoformat(status.updated_at or "").timestamp())
    except (TypeError, ValueError):
        pass
    silent = time.time() - max(stamps) if stamps else 0.0
    return silent <= STALE_AFTER_S or silent <= 3 * _log_interval_s(run_dir)


def _log_interval_s(run_dir: Path, tail_bytes: int = 16384) -> float:
    """The longest gap in elapsed_s between consecutive rows in the tail of metrics.jsonl (0 if unknown).
    Only the tail is read: this runs for every silent remote run of a large sweep."""
    try:
        with open(run_dir / layout.METRICS_FILE, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - tail_bytes))
            lines = fh.read().decode("utf-8", errors="replace").splitlines()[1 if size > tail_bytes else 0:]
    except OSError:
        return 0.0
    times = []
    for line in lines:
        try:
            elapsed = MetricRow.from_json(json.loads(line)).elapsed_s
        except (ValueError, TypeError, AttributeError):
            continue  # a cut or foreign line: the others suffice
        if elapsed is not None:
            times.append(float(elapsed))
    return max((b - a for a, b in zip(times, times[1:])), default=0.0)


def is_evaluated(run_dir: str | Path, tasks: list[str] | None = None) -> bool:
    """Some checkpoint has finished every named task (any when None): its scores.json, written last."""
    root = Path(run_dir) / layout.EVAL_DIR
    if not tasks:
        return any(root.glob(f"*/*/{layout.SCORES_FILE}"))
    return any(all((label / t / layout.SCORES_FILE).is_file() for t in tasks) for label in root.glob("*/"))


def task_names(cfg: RunConfig) -> list[str]:
    """The names of a run's evaluation tasks (for is_evaluated)."""
    return [t.name for t in cfg.eval.resolved_tasks()]


def training_state(run_dir: str | Path, status: Status | None = None) -> layout.RunState:
    """pending | running | completed | failed | interrupted, from the run's files (`status`: as just read)."""
    run_dir = Path(run_dir)
    status = read_status(run_dir) if status is None else status
    state = status.state
    if state == layout.COMPLETED and (run_dir / layout.SUMMARY_FILE).is_file():
        return layout.COMPLETED
    if state == layout.RUNNING and not _running_alive(run_dir, status):
        return layout.INTERRUPTED  # killed without a chance to say so (SIGKILL, node failure, silent host)
    if state in (layout.FAILED, layout.INTERRUPTED, layout.RUNNING):
        return layout.RunState(state)
    return layout.PENDING
