"""`tunelab status` and `tunelab cancel`, the same for every executor: rows merge the ledger's jobs
(refreshed from their executors) with each run's own files; cancel stops a run's open jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from tunelab import ledger
from tunelab.console import say
from tunelab.errors import TunelabError
from tunelab.execute.claims import experiment_lock
from tunelab.execute.executor import Executor
from tunelab.execute.failures import CANCELLED, COMPLETED, base_state
from tunelab.execute.jobs import RunJobs, all_jobs, is_active, latest_jobs
from tunelab.execute.progress import run_progress
from tunelab.execute.refresh import executors_for, refresh
from tunelab.experiment import is_evaluated, load_runs, select_runs, task_names, training_state
from tunelab.results import TYPES
from tunelab.runconfig import RunConfig
from tunelab.train import status as st


def _refresh_if_free(exp: Path, runs: dict[str, RunConfig]) -> None:
    jobs = [j for j in all_jobs(exp) if j["failure"] is None]
    if not jobs:
        return
    with experiment_lock(exp, wait=False) as free:  # busy: a coordinator is refreshing right now
        if free:
            try:
                refresh(exp, runs, executors_for(jobs))
            except TunelabError:
                pass  # a scheduler that cannot be asked: status shows what the ledger and the files know


def _row(cfg: RunConfig, rj: RunJobs) -> dict[str, Any]:
    status = st.read_status(cfg.run_dir) if cfg.kind == "finetune" else {}
    evaluated = is_evaluated(cfg.run_dir, task_names(cfg))
    files = training_state(cfg.run_dir) if cfg.kind == "finetune" else (st.COMPLETED if evaluated else st.PENDING)
    row: dict[str, Any] = {"name": cfg.name, "type": TYPES[cfg.kind], "attempt": cfg.attempt, "files": files,
                           "job_id": None, "job_state": None, "executor": None, "progress": "", "eta": "",
                           "failure": None, "detail": "", "eval": None}
    job = rj.train if cfg.kind == "finetune" else rj.eval
    if job:
        row.update(job_id=job["job_id"], job_state=job["state"], failure=job["failure"], executor=job["executor"])
    if rj.eval:
        row["eval"] = "scored" if evaluated else (rj.eval["failure"] or rj.eval["state"].lower())
    elif evaluated:
        row["eval"] = "scored"
    if cfg.kind == "finetune" and status.get("attempt", cfg.attempt) == cfg.attempt:
        row["progress"], row["eta"] = run_progress(cfg, status)
    if is_active(job):
        state = base_state(job["state"]).lower()
        state = "pending" if state in ("submitted", "requeued") else state
    elif files == st.COMPLETED:
        state = "completed"
        if job and job["failure"] == COMPLETED and (job["detail"] or "").startswith("completed, job exit"):
            row["detail"] = job["detail"]
        row["eta"] = ""
    elif job and job["failure"]:
        state = job["failure"].upper()
        row["detail"] = job["detail"] or ""
    else:
        state = files
    row["state"] = state
    return row


def status_rows(experiment_dir: str | Path, refresh_jobs: bool = True) -> list[dict]:
    """One merged record per run and control: its newest jobs (via the ledger) and its files."""
    exp = Path(experiment_dir).resolve()
    all_runs = load_runs(exp)
    if refresh_jobs:
        _refresh_if_free(exp, {r.name: r for r in all_runs})
    latest = latest_jobs(exp)
    return [_row(cfg, latest.get(cfg.name, RunJobs(None, None))) for cfg in all_runs]


def cancel(experiment_dir: str | Path, names: list[str] | None = None, console: Console | None = None,
           executors: dict[str, Executor] | None = None) -> list[str]:
    """Cancel the queued/running jobs of the given runs (all by default), whatever executor runs them;
    the ledger says CANCELLED and records the attempt."""
    console = console or Console()
    exp = Path(experiment_dir).resolve()
    all_runs = load_runs(exp)
    selected = {r.name for r in select_runs(all_runs, names)}
    runs = {r.name: r for r in all_runs}
    known = executors_for(all_jobs(exp), executors)
    refresh(exp, runs, known)
    jobs = [j for j in all_jobs(exp) if j["run"] in selected and is_active(j)]
    for name, ex in known.items():
        ex.cancel([j["job_id"] for j in jobs if j["executor"] == name])
    for j in jobs:
        ledger.update_job(exp, j["id"], state="CANCELLED", failure=CANCELLED, handled=1,
                          detail="CANCELLED by tunelab cancel")
        if j["kind"] == "train":
            ledger.record_attempt(exp, run=j["run"], attempt=j["attempt"], executor=j["executor"],
                                  job_id=j["job_id"], started_at=j["submitted_at"], finished_at=st.now_iso(),
                                  exit_code=None, state=CANCELLED, reason="cancelled by tunelab cancel")
        say("cancelled {} {} job {}", j["run"], j["kind"], j["job_id"], console=console)
    if not jobs:
        say("nothing to cancel: no queued or running job for these runs", console=console)
    ledger.ingest_all(exp, all_runs)
    return [j["job_id"] for j in jobs]
