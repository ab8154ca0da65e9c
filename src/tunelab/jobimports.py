"""A job process's imports (the training job, the probe's steps, the loop-cost job, an evaluation): its stack
imported with the collector paused (host/startup.py), and two things only a job's start needs.

1. The installed packages' map. While the stack imports, `importlib.metadata.packages_distributions` (a read of
   every installed package's file list, 0.14 s of a training job's 2.9 s of imports idle here, 190 distributions;
   TRL makes it at import time to check two versions) answers from tunelab's cache, keyed by the import path's
   distribution directories and their modification times: installing or removing a package changes its
   directory's, and the next process scans again.
2. What the import cost, recorded by the jobs themselves: a training job its stack's import (train/job.py), an
   evaluation job its own (the first evaluation of a `tunelab eval` process), kept in tunelab's cache per machine,
   interpreter and library versions. Only an import made fresh (torch not yet loaded) and beside no other work is
   recorded: a test session's or the MCP server's later imports, or a contended one, would say something else.
   TUNELAB_RECORD_IMPORTS=0 turns recording off, and the first plan's stand-in below with it (the test suite: its
   jobs run beside its other tests, and its plans must not change with what another test's job or plan recorded
   meanwhile).

Why: the plan prices an evaluation job's start from the training job's measured start (forecast/jobstart.py); the
two start alike but for their stacks, and the evaluation's (inspect-ai, statsmodels) took 0.9 s longer here than
the training's (TRL, datasets). Recorded by the jobs, the difference costs the plan nothing to know. Before any
evaluation job has run here, it is assumed from the training's import: ASSUMED_EVALUATION_RATIO times it, said so;
before any job recorded one (a machine's first plan), from the training stack's import the plan timed for a job's
start-up (forecast/cpuspeed.kept_job_import).
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from importlib.metadata import PackageNotFoundError, version

from tunelab.diskcache import cached_json, store_json, stored_json, this_environment
from tunelab.host.cpuload import LoadMeter, LoadWindow
from tunelab.host.machine import machine_key
from tunelab.host.startup import import_stack

KIND = "stack-imports"
# an evaluation job's import of its stack ÷ a training job's, before one is recorded here: the median of 1.42 (3.4 s
# against 2.4, docs/evaluation.md), 1.70 (7.8 against 4.6) and 1.99 (11.0 against 5.5, both 2026-11-29) measured on
# 2-core machines. Without it such a plan priced an evaluation job's start as a training job's: 26-35 % short on the
# deadline benchmark's evaluations (docs/benchmarks.md)
ASSUMED_EVALUATION_RATIO = 1.7


class Stack(StrEnum):
    TRAINING = "training"
    EVALUATION = "evaluation"


def _key(stack: Stack) -> list[object]:
    versions = []
    for name in ("torch", "transformers"):
        try:
            versions.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            versions.append(f"{name} absent")
    return [*machine_key(), this_environment(), str(stack), versions]


def record_import(stack: Stack, seconds: float, window: LoadWindow | None) -> None:
    """A job's fresh import of its stack took `seconds`, with `window` the load over it: kept when uncontended."""
    if window is None or window.contended or seconds <= 0 or not recording():
        return
    store_json(KIND, _key(stack), {"seconds": round(seconds, 3)})


def recording() -> bool:
    """Whether imports are recorded and a plan's timed one stands in for them (TUNELAB_RECORD_IMPORTS=0: neither)."""
    return os.environ.get("TUNELAB_RECORD_IMPORTS") != "0"


def recorded_import_s(stack: Stack) -> float | None:
    """The seconds a job's import of `stack` last took here, uncontended; None before one is recorded."""
    got = stored_json(KIND, _key(stack))
    try:
        return float(got["seconds"]) if got else None
    except (KeyError, TypeError, ValueError):
        return None


@dataclass(frozen=True)
class ImportExtra:
    """How much longer an evaluation job's import takes here than a training job's (0 where it is shorter), and
    whether that is assumed (no evaluation job recorded here yet: ASSUMED_EVALUATION_RATIO of the training's);
    `timed_by_plan`: the training's import is not a job's record but the one the plan timed (a machine's first)."""

    seconds: float
    assumed: bool
    timed_by_plan: bool = False


def evaluation_extra(planned_import: Callable[[], float | None] | None = None) -> ImportExtra | None:
    """The evaluation stack's import beyond the training stack's, as the jobs recorded them; assumed from the
    training's where no evaluation is recorded yet — a job's record, else what `planned_import` reads, the import a
    plan timed for a job's start-up (forecast/cpuspeed.kept_job_import), read only then —; None with neither."""
    evaluation, training = recorded_import_s(Stack.EVALUATION), recorded_import_s(Stack.TRAINING)
    if training is None:
        planned = planned_import() if planned_import is not None and recording() else None
        return ImportExtra(round(planned * (ASSUMED_EVALUATION_RATIO - 1.0), 3), assumed=True,
                           timed_by_plan=True) if planned else None
    if evaluation is None:
        return ImportExtra(round(training * (ASSUMED_EVALUATION_RATIO - 1.0), 3), assumed=True)
    return ImportExtra(max(0.0, evaluation - training), assumed=False)


def _path_stamps() -> list[tuple[str, int]]:
    """(directory, mtime_ns) of every directory on the import path that holds installed distributions (*.dist-info,
    *.egg-info): what a package's install or removal changes. A script's own directory holds none and is left out,
    whatever else is written there."""
    out = []
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
            if any(n.endswith((".dist-info", ".egg-info")) for n in names):
                out.append((os.path.abspath(entry or "."), os.stat(entry or ".").st_mtime_ns))
        except OSError:
            continue
    return out


@contextmanager
def distributions_from_cache() -> Iterator[None]:
    """Inside, `importlib.metadata.packages_distributions()` answers from the cache while the import path's
    directories are unchanged (a scan otherwise, kept); the library's own function again afterwards."""
    scan = importlib.metadata.packages_distributions

    def cached() -> dict[str, list[str]]:
        return {k: list(v) for k, v in cached_json("packages-distributions", [this_environment(), _path_stamps()],
                                                   lambda: {k: list(v) for k, v in scan().items()}).items()}

    importlib.metadata.packages_distributions = cached
    try:
        yield
    finally:
        importlib.metadata.packages_distributions = scan


def import_job_stack(*modules: str, record_as: Stack) -> None:
    """A job process's stack imported (host/startup.import_stack) with the installed packages' map from the cache;
    its import timed and recorded as `record_as` when it is a fresh one (torch not loaded yet) beside no other work."""
    fresh = "torch" not in sys.modules
    meter, started = (LoadMeter.start(threads=1), time.perf_counter()) if fresh else (None, 0.0)
    with distributions_from_cache():
        import_stack(*modules)
    if fresh:
        record_import(record_as, time.perf_counter() - started, meter.window() if meter is not None else None)
