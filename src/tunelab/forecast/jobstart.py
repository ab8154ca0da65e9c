"""A job's start-up (process, imports, model load, a vLLM server's start), one owner so that a run's start-up is one
figure in the makespan, the evaluation's prediction and limit, and the re-plan.

The run's start-up as its training estimate has it (measured, probed or timed by the plan), else the median of past
runs of this model on this device kind, else of other models there, else ASSUMED_STARTUP_S. An evaluation job imports
the evaluation stack instead: its start is the training job's plus the recorded import difference
(tunelab/jobimports.py; on a machine's first plan, assumed from the import the plan timed). A vLLM job adds
VLLM_SERVER_START_S (assumed) and errs long by the HF load it does not make.

Before its start-up a job waits for its executor to start its process (`job_dispatch`): the median dispatch the
history recorded on that executor (ledger/submission.py), else assumed per executor."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from tunelab.catalog import GPU, Architecture, resolve_architecture
from tunelab.errors import TunelabError
from tunelab.forecast.combine import independent
from tunelab.forecast.cpuspeed import kept_job_import
from tunelab.forecast.interval import time_range
from tunelab.forecast.runs import ASSUMED_STARTUP_S
from tunelab.forecast.speedhistory import same_device
from tunelab.jobimports import (
    ASSUMED_EVALUATION_RATIO,
    ImportExtra,
    Stack,
    evaluation_extra,
    recorded_import_s,
    recording,
)
from tunelab.ledger.history import HistoryRun
from tunelab.rundir.estimate import RunEstimate, SourceKind, TimeRange
from tunelab.spec.evaluation import Engine
from tunelab.spec.resources import ExecutorKind

# eval.engine vllm: the server's start (import, engine build, weights; 10-60 s measured on CPUs), once per base
# model; no vLLM start is in the history yet, so it is assumed
VLLM_SERVER_START_S = 60.0

# executor: ray, assumed where the history holds no Ray job's dispatch: a Ray job's submission to its entrypoint, the job
# supervisor's start, measured 2026-11-27 on the suite's cluster: docs/benchmarks.md
RAY_DISPATCH_S = 2.5
# executor: slurm, assumed: sbatch to the batch script's start on an idle cluster (a scheduling pass); no measured
# figure yet (the team's reference facts hold none), and a busy queue's wait is not predicted
SLURM_DISPATCH_S = 1.0
ASSUMED_DISPATCH_S = {ExecutorKind.LOCAL: 0.0, ExecutorKind.SLURM: SLURM_DISPATCH_S, ExecutorKind.RAY: RAY_DISPATCH_S}


@dataclass(frozen=True)
class JobDispatch:
    """A job's dispatch on an executor, which every job it starts pays once: its submission to its process's creation
    (a Ray job's supervisor, a Slurm scheduling pass); seconds, its source in words and as a kind."""

    executor: str
    seconds: float
    source: str
    kind: SourceKind

    @property
    def said(self) -> str:
        return f"{self.seconds:.1f} s {self.executor} job dispatch ({self.source})"

    @property
    def words(self) -> str:
        """What a start-up's source adds for it ('' when it costs nothing: a local plan's words stay as they were)."""
        return f" + {self.said}" if self.seconds else ""

    def range(self) -> TimeRange | None:
        """Its interval at its kind's width (None when it costs nothing)."""
        return time_range(self.seconds, self.kind, what=f"{self.executor} job dispatch") if self.seconds else None


def job_dispatch(executor: str, history: Sequence[HistoryRun]) -> JobDispatch:
    """The median dispatch of the history's jobs on this executor kind, else the executor's assumed figure."""
    seen = [r.dispatch_s for r in history if r.executor == executor and r.dispatch_s is not None]
    if seen:
        # to a tenth of a second: a local job's few milliseconds price as nothing, and its plan's words stay
        return JobDispatch(executor, round(statistics.median(seen), 1), f"history median of {len(seen)} jobs",
                           SourceKind.MEASURED)
    return JobDispatch(executor, ASSUMED_DISPATCH_S.get(ExecutorKind(executor), 0.0), "assumed", SourceKind.ASSUMED)


@dataclass(frozen=True)
class JobStart:
    """A job's start-up: seconds (a vLLM server's included), its source in words and as a kind, the server's part."""

    seconds: float
    source: str
    kind: SourceKind
    server_s: float = 0.0
    dispatch: JobDispatch | None = None  # its executor's dispatch before it, inside `seconds` (with_dispatch)

    def range(self) -> TimeRange:
        """Its interval: the job's start at its kind's width, the server's start as assumed, its dispatch at its kind,
        independent."""
        dispatch_s = self.dispatch.seconds if self.dispatch is not None else 0.0
        own = time_range(self.seconds - self.server_s - dispatch_s, self.kind, what="job start")
        server = time_range(self.server_s, SourceKind.ASSUMED, what="vLLM server start") if self.server_s else None
        return independent([own, server, self.dispatch.range() if self.dispatch is not None else None]) or own


def with_dispatch(start: JobStart, dispatch: JobDispatch) -> JobStart:
    """The job's start after its executor's dispatch (itself where the dispatch costs nothing)."""
    if not dispatch.seconds:
        return start
    return JobStart(round(start.seconds + dispatch.seconds, 3), start.source + dispatch.words, start.kind,
                    start.server_s, dispatch)


def training_import_s() -> float | None:
    """The training stack's import as the jobs recorded it here (tunelab/jobimports.py): what a warm start skips.
    Before a job recorded one, the import a plan timed for a job's start-up (cpuspeed.kept_job_import), where imports
    are recorded at all: a machine's first search priced every trial's start cold, 46 s for four trials that took
    ~26. None with neither."""
    recorded = recorded_import_s(Stack.TRAINING)
    if recorded is None and recording():
        return kept_job_import()
    return recorded


def warm_start_s(executor: str, gpu: GPU | None) -> float:
    """What a sweep's training job skips of its start-up where its lane ran a job before: the stack's import, where
    the executor forks a lane's jobs from one warm process (local, on a CPU: execute/local_jobs.py); 0 on a
    scheduler, on GPUs (their jobs start cold) or with no import recorded or timed here (training_import_s)."""
    if executor != ExecutorKind.LOCAL or gpu is not None:
        return 0.0
    return training_import_s() or 0.0


def job_start(model: str, gpu: GPU | None, history: Sequence[HistoryRun],
              estimate: RunEstimate | None = None) -> JobStart:
    """A job's process start, imports and model load (see the module's docstring for the order of sources)."""
    if estimate is not None and estimate.startup_s is not None and estimate.startup_kind \
            and estimate.startup_kind != SourceKind.ASSUMED:
        kind = SourceKind(estimate.startup_kind)  # the training estimate's start-up: history, probed or timed here
        return JobStart(estimate.startup_s, f"the run's start-up as its training estimate has it ({kind})", kind)
    stem = gpu.name.split("-")[0].lower() if gpu is not None else "cpu"
    here = [r for r in history if r.startup_s is not None and same_device(r, gpu, None)]  # on a CPU: this CPU's
    arch = architecture_or_none(model)
    same = sorted(r.startup_s or 0.0 for r in here if r.of_architecture(arch))
    if same:
        return JobStart(same[len(same) // 2], f"history: median start-up of {len(same)} past run(s) of this model "
                        f"on {stem}", SourceKind.MEASURED)
    seen = sorted(r.startup_s or 0.0 for r in here)
    if seen:
        return JobStart(seen[len(seen) // 2], f"history: median start-up of {len(seen)} past run(s) of other "
                        f"models on {stem} (this model's load not measured: width as assumed)", SourceKind.ASSUMED)
    return JobStart(ASSUMED_STARTUP_S, f"{ASSUMED_STARTUP_S:.0f} s (assumed)", SourceKind.ASSUMED)


def eval_start(model: str, gpu: GPU | None, history: Sequence[HistoryRun], engine: Engine,
               estimate: RunEstimate | None = None) -> JobStart:
    """An evaluation job's start-up: the job's start with the evaluation stack's import, plus a vLLM server's."""
    start = with_evaluation_imports(job_start(model, gpu, history, estimate), evaluation_extra(kept_job_import))
    if engine != Engine.VLLM:
        return start
    return JobStart(round(start.seconds + VLLM_SERVER_START_S, 3),
                    f"{start.source} + {VLLM_SERVER_START_S:.0f} s vLLM server start (assumed)", start.kind,
                    VLLM_SERVER_START_S)


def with_evaluation_imports(start: JobStart, extra: ImportExtra | None) -> JobStart:
    """A training job's start as an evaluation job's: plus `extra`, the evaluation stack's import beyond the
    training stack's as the jobs recorded them here, or assumed from the training's (None: nothing recorded, the
    start as it is)."""
    if extra is None or not extra.seconds:
        return start
    of = "the training stack's import a plan timed here: no job's recorded yet" if extra.timed_by_plan else \
        "the training job's import recorded here: no evaluation job's yet"
    how = f"assumed {ASSUMED_EVALUATION_RATIO:g}× {of}" if extra.assumed else "as the jobs recorded them"
    return JobStart(round(start.seconds + extra.seconds, 3), f"{start.source} + {extra.seconds:.1f} s: an evaluation "
                    f"job's imports here beyond a training job's ({how})", start.kind, start.server_s)


def architecture_or_none(path: str) -> Architecture | None:
    """The model's architecture, None where it cannot be read (an estimate goes on without it)."""
    try:
        return resolve_architecture(path)
    except (TunelabError, OSError, ValueError):
        return None
