"""`tunelab status` and `tunelab cancel`, the same for every executor: rows merge the ledger's jobs
(refreshed from their executors) with each run's own files; cancel stops a run's open jobs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import ConfigDict
from rich.console import Console

from tunelab.console import say
from tunelab.errors import TunelabError
from tunelab.execute.claims import experiment_lock
from tunelab.execute.executor import Executor, JobKind
from tunelab.execute.failures import CANCELLED, COMPLETED, FailureKind
from tunelab.execute.job_states import JobState
from tunelab.execute.jobs import JobRow, RunJobs, all_jobs, is_active, latest_jobs
from tunelab.execute.refresh import executors_for, refresh
from tunelab.ledger import store as ledger
from tunelab.ledger.results import TYPES
from tunelab.rundir import COMPLETED as DONE
from tunelab.rundir import PENDING, RUNNING, Status, now_iso, read_metrics, read_status
from tunelab.rundir.config import RunConfig
from tunelab.rundir.experiment import is_evaluated, load_runs, select_runs, task_names, training_state
from tunelab.rundir.layout import RunState
from tunelab.rundir.metrics import seconds_left


def eta_seconds(cfg: RunConfig, status: Status) -> float | None:
    """Seconds left at the run's live pace (rundir/metrics.py `seconds_left`); None before a step or once done."""
    if not status.step or not status.total_steps or status.step >= status.total_steps:
        return None
    return seconds_left(read_metrics(cfg.run_dir), status.step, status.total_steps)


def clock(secs: float | None) -> str:
    """12m05s ('' when unknown)."""
    if secs is None:
        return ""
    secs = int(secs)
    return f"{secs // 60}m{secs % 60:02d}s"


def run_progress(cfg: RunConfig, status: Status) -> tuple[str, str]:
    """("step S/T, epoch E/N", "ETA") or empty strings before the first logged step."""
    step, total = status.step, status.total_steps
    if not step or not total:
        return "", ""
    epoch = status.epoch
    epochs = sum(t.epochs for t in cfg.trainings())  # a staged run: its stages' epochs, counted on across them
    prog = f"step {step}/{total}" + (f", epoch {epoch:.2f}/{epochs}" if epoch is not None and epochs else "")
    if status.stage and cfg.stages:
        prog += f", stage {(status.stage_index or 0) + 1}/{len(cfg.stages)} ({status.stage})"
    return prog, clock(eta_seconds(cfg, status))


class RowState(StrEnum):
    """What `tunelab status` says of a run: pending or running while its job is, completed, or how it ended (the
    verdict, FailureKind, or its files' state). Values are RunState's and FailureKind's strings; `label` the word."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    INTERRUPTED = "interrupted"
    FAILED = "failed"
    OOM = "oom"
    TIMEOUT = "timeout"
    PREEMPTED = "preempted"
    NODE_FAIL = "node_fail"
    CANCELLED = "cancelled"

    @classmethod
    def of_run(cls, state: RunState) -> RowState:
        return cls(state.value)

    @classmethod
    def of_failure(cls, kind: FailureKind) -> RowState:
        return cls(kind.value)

    @classmethod
    def of_job(cls, state: JobState | None) -> RowState:
        """An active job's row: pending while it waits for a start, running once it holds its allocation."""
        return cls.PENDING if state is None or state.queued else cls.RUNNING

    @property
    def ended_badly(self) -> bool:
        """Stopped without completing: a failure verdict, or failed/interrupted files."""
        return self not in (RowState.PENDING, RowState.RUNNING, RowState.COMPLETED)

    @property
    def label(self) -> str:
        """The table's word: a verdict in the scheduler's capitals (OOM, TIMEOUT, ...), run states in lower case."""
        return self.value.upper() if self.ended_badly and self is not RowState.INTERRUPTED else self.value


class EvalState(StrEnum):
    """Where a run's evaluation stands short of a verdict: scored once every task is written; else its newest evaluation
    job's state. Values are what `status --json` says; `eval_label` the tables' word."""

    SCORED = "scored"
    PENDING = "pending"
    RUNNING = "running"
    ENDED = "ended"

    @classmethod
    def of(cls, job: JobRow | None, evaluated: bool) -> EvalState | FailureKind | None:
        """From the run's files (every task scored) and its newest evaluation job; None: neither says anything."""
        if evaluated:
            return cls.SCORED
        if job is None:
            return None
        if job.failure is not None:
            return job.failure
        return cls(RowState.of_job(job.job_state).value) if job.active else cls.ENDED


def eval_failed(state: EvalState | FailureKind | None) -> bool:
    """The evaluation job ended on a failure verdict (oom, timeout, ..., failed)."""
    return isinstance(state, FailureKind) and RowState.of_failure(state).ended_badly


def eval_label(state: EvalState | FailureKind | None) -> str:
    """StatusRow.eval as the tables write it: a verdict as the state column writes it (OOM, CANCELLED, ...)."""
    if isinstance(state, FailureKind):
        return RowState.of_failure(state).label
    return state.value if state is not None else ""


@dataclass
class StatusRow:
    """One run or control as `tunelab status` shows it: its newest job (via the ledger) and its files."""

    # each field's docstring is its key's description in `status --json`'s schema (pydantic reads them)
    __pydantic_config__ = ConfigDict(use_attribute_docstrings=True)

    name: str
    """The run, control or eval-only run."""
    type: str
    """fine-tuned, control or eval-only (results.TYPES)."""
    attempt: int
    """Its run.yaml's attempt: 1, plus one per retry after a failure."""
    files: RunState
    """The state its files say (status.json): pending, running, completed, failed, interrupted."""
    job_id: str | None = None
    """Its newest job's id (None: never submitted)."""
    job_state: str | None = None
    """That job's state, as the scheduler said it (e.g. RUNNING, COMPLETED, OUT_OF_MEMORY)."""
    executor: str | None = None
    """Where the job runs: local, slurm or ray."""
    node: str = ""
    """The node its newest job runs or ran on, as the scheduler names it (empty: not known yet, or local)."""
    progress: str = ""
    """Steps and epoch reached, e.g. 'step 12/40, epoch 0.60/2' (empty: no step logged yet)."""
    eta: str = ""
    """Time left, estimated from its steps so far (empty: unknown)."""
    failure: FailureKind | None = None
    """The verdict on its ended job: completed, oom, timeout, preempted, node_fail, cancelled or failed."""
    detail: str = ""
    """The failure's evidence, e.g. an exit code or the line that says why (empty: nothing to say)."""
    reason: str = ""
    """Why it did not complete, in one line: the job's own words from status.json ('no space left on …'), else
    the verdict's detail (empty: it completed, or has not ended)."""
    eval: EvalState | FailureKind | None = None
    """Its evaluation: scored, pending, running, ended, or its eval job's failure verdict (None: neither)."""
    state: RowState = RowState.PENDING
    """The one state to act on: the job's while it is active, else completed, the failure verdict or the files'."""
    active: bool = field(default=False, repr=False)
    """Queued or running (it or its evaluation): something will still change."""

    def to_json(self) -> dict[str, Any]:
        """The row as a plain dict, without `active` (`status --json` prints it in StatusOut, `active` included)."""
        out = asdict(self)
        del out["active"]
        return out

    @property
    def shown(self) -> str:
        """The state as the table shows it, with an active job's own word where it says more ('running (suspended)')."""
        job = JobState.of(self.job_state)
        if self.state in (RowState.PENDING, RowState.RUNNING) and job is not None and job.active and job not in (
                JobState.PENDING, JobState.RUNNING, JobState.SUBMITTED):
            return f"{self.state.label} ({job.value.lower()})"
        return self.state.label


def failure_lines(rows: list[StatusRow]) -> list[str]:
    """One line per run that ended badly ('tiny_r4 FAILED: no space left on …'), under run's and status's tables."""
    return [f"{r.name} {r.state.label}" + (f": {r.reason}" if r.reason else "") for r in rows if r.state.ended_badly]


def not_completed(experiment_dir: str | Path, results: dict[str, RowState], where: str) -> list[str]:
    """A sweep's closing lines for runs not completed: each with its reason, then the count; [] when all completed."""
    bad = {name for name, state in results.items() if state != RowState.COMPLETED}
    if not bad:
        return []
    rows = [r for r in status_rows(experiment_dir, refresh_jobs=False) if r.name in bad]
    shown = failure_lines(rows) + [f"{r.name} {r.state.label}" for r in rows if not r.state.ended_badly]
    return [*shown, f"{len(bad)} run(s) did not complete; see {where}"]


def _refresh_if_free(exp: Path, runs: dict[str, RunConfig]) -> None:
    jobs = [j for j in all_jobs(exp) if j.open]
    if not jobs:
        return
    with experiment_lock(exp, wait=False) as free:  # busy: a coordinator is refreshing right now
        if free:
            try:
                refresh(exp, runs, executors_for(jobs))
            except TunelabError:
                pass  # a scheduler that cannot be asked: status shows what the ledger and the files know


def _state(row: StatusRow, job: JobRow | None) -> RowState:
    if job is not None and job.active:
        return RowState.of_job(job.job_state)
    if row.files == DONE:
        if job and job.failure == COMPLETED and (job.detail or "").startswith("completed, job exit"):
            row.detail = job.detail or ""
        row.eta = ""
        return RowState.COMPLETED
    if job and job.failure:
        row.detail = job.detail or ""
        return RowState.of_failure(job.failure)
    return RowState.of_run(row.files)


def status_row(cfg: RunConfig, rj: RunJobs | None = None) -> StatusRow:
    """One run's row from its newest jobs and its files."""
    rj = rj or RunJobs()
    status = read_status(cfg.run_dir) if cfg.kind == "finetune" else Status()
    evaluated = is_evaluated(cfg.run_dir, task_names(cfg))
    files = training_state(cfg.run_dir, status) if cfg.kind == "finetune" else (DONE if evaluated else PENDING)
    row = StatusRow(cfg.name, TYPES[cfg.kind], cfg.attempt, files)
    job = rj.train if cfg.kind == "finetune" else rj.eval
    if job:
        row.job_id, row.job_state, row.failure, row.executor = job.job_id, job.state, job.failure, job.executor
        row.node = job.node or ""
    row.eval = EvalState.of(rj.eval, evaluated)
    if cfg.kind == "finetune" and (status.attempt is None or status.attempt == cfg.attempt):
        row.progress, row.eta = run_progress(cfg, status)
    row.state = _state(row, job)
    if row.state.ended_badly:
        row.reason = (status.reason if status.attempt in (None, cfg.attempt) else "") or row.detail
    # queued or running; a run training without a job of ours (by hand) counts, one nobody started does not
    row.active = (is_active(job) or (rj.eval is not None and not evaluated and rj.eval.active)
                  or (job is None and files == RUNNING))
    return row


def status_rows(experiment_dir: str | Path, refresh_jobs: bool = True) -> list[StatusRow]:
    """One merged record per run and control: its newest jobs (via the ledger) and its files."""
    exp = Path(experiment_dir).resolve()
    all_runs = load_runs(exp)
    if refresh_jobs:
        _refresh_if_free(exp, {r.name: r for r in all_runs})
    latest = latest_jobs(exp)
    return [status_row(cfg, latest.get(cfg.name)) for cfg in all_runs]


def cancel(experiment_dir: str | Path, names: list[str] | None = None, console: Console | None = None,
           executors: dict[str, Executor] | None = None) -> list[str]:
    """Cancel the active jobs of the given runs (default all), whatever runs them; the ledger records CANCELLED."""
    console = console or Console()
    exp = Path(experiment_dir).resolve()
    all_runs = load_runs(exp)
    selected = {r.name for r in select_runs(all_runs, names)}
    runs = {r.name: r for r in all_runs}
    known = executors_for(all_jobs(exp), executors)
    refresh(exp, runs, known)
    jobs = [j for j in all_jobs(exp) if j.run in selected and j.active]
    for name, ex in known.items():
        ex.cancel([j.job_id for j in jobs if j.executor == name])
    for j in jobs:
        ledger.update_job(exp, j.id, state=JobState.CANCELLED, failure=CANCELLED, handled=1,
                          detail="CANCELLED by tunelab cancel")
        if j.kind == JobKind.TRAIN:
            ledger.record_attempt(exp, run=j.run, attempt=j.attempt, executor=j.executor, node=j.node,
                                  job_id=j.job_id, started_at=j.submitted_at, finished_at=now_iso(),
                                  exit_code=None, state=CANCELLED, reason="cancelled by tunelab cancel")
        say("cancelled {} {} job {}", j.run, j.kind, j.job_id, console=console)
    if not jobs:
        say("nothing to cancel: no queued or running job for these runs", console=console)
    ledger.ingest_all(exp, all_runs)
    return [j.job_id for j in jobs]
