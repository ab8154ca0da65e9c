"""`tunelab run --executor slurm`: submit each run's training job and its evaluation job (afterok),
throttled and staggered, then (--wait) follow them to a verdict, applying retries. Job ids live in
the ledger (table `jobs`), so `tunelab run` is idempotent: it submits only what is neither queued,
running nor done.

The pieces: execute/slurm_cli.py (the Slurm commands, as an Executor), execute/jobs.py (ledger
views), execute/refresh.py (squeue + sacct -> ledger, verdicts), execute/submit.py (throttled
submission), execute/follow.py (retries, --wait), execute/status.py (status rows, cancel). Jobs only
write files in their run directory; this coordinator is the only writer of tunelab.db.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from tunelab import ledger
from tunelab.console import say
from tunelab.execute.claims import experiment_lock, holder
from tunelab.execute.follow import handle_ended, wait_for_jobs
from tunelab.execute.jobs import RunJobs, is_active, latest_jobs
from tunelab.execute.refresh import refresh
from tunelab.execute.slurm_pack import is_packed, pack_groups
from tunelab.execute.slurm_arrays import array_groups
from tunelab.execute.slurm_cli import Slurm, SlurmExecutor
from tunelab.execute.slurm_jobs import slurm_settings
from tunelab.execute.status import cancel, status_rows
from tunelab.execute.submit import Submitter
from tunelab.experiment import is_evaluated, load_runs, select_runs, task_names, training_state
from tunelab.runconfig import RunConfig
from tunelab.train import status as st

__all__ = ["Slurm", "cancel", "plan_submissions", "run_slurm", "status_rows"]


def plan_submissions(exp: Path, runs: list[RunConfig], force: bool) -> list[tuple[RunConfig, bool, bool, str | None, str]]:
    """(run, submit train?, submit eval?, afterok job, reason) for everything neither queued, running nor done."""
    latest = latest_jobs(exp)
    todo = []
    for cfg in runs:
        rj = latest.get(cfg.name, RunJobs(None, None))
        if cfg.kind != "finetune":  # controls and eval-only checkpoints: an evaluation job only
            if (is_evaluated(cfg.run_dir, task_names(cfg)) and not force) or is_active(rj.eval):
                continue
            todo.append((cfg, False, True, None, f"{cfg.kind.replace('_', '-')} evaluation"))
            continue
        state = training_state(cfg.run_dir)
        if is_active(rj.train) and rj.train["executor"] != "slurm":
            continue  # being trained by the local executor right now
        if is_active(rj.train):
            if not is_active(rj.eval) and not (rj.eval and rj.eval["depends_on"] == rj.train["job_id"]):
                todo.append((cfg, False, True, rj.train["job_id"], "evaluation after the queued training job"))
            continue
        if state == st.COMPLETED and not force:
            if is_evaluated(cfg.run_dir, task_names(cfg)) or is_active(rj.eval):
                continue
            todo.append((cfg, False, True, None, "evaluation of the completed run"))
            continue
        if (state == st.RUNNING or holder(cfg.run_dir)) and not rj.train:
            continue  # being trained by someone else (local executor: job alive, or the run claimed)
        if rj.train is None:
            reason = "first submission" if state == st.PENDING else f"was {state}: resumes from its last checkpoint"
        else:
            reason = f"resubmission after {rj.train['failure'] or rj.train['state']} (job {rj.train['job_id']})"
        todo.append((cfg, True, True, None, reason))
    return todo


def _clear_forced(exp: Path, selected: list[RunConfig]) -> None:
    from tunelab.execute.local import clear_outputs

    latest = latest_jobs(exp)
    for cfg in selected:
        rj = latest.get(cfg.name)
        if not (rj and (is_active(rj.train) or is_active(rj.eval))):
            clear_outputs(cfg.run_dir)


def run_slurm(experiment_dir: str | Path, names: list[str] | None = None, force: bool = False,
              dry_run: bool = False, wait: bool = False, console: Console | None = None) -> dict[str, str]:
    """Submit what is pending; with wait, follow every job to its verdict (applying retries).
    Returns {run: state} (states as `tunelab status` shows them)."""
    console = console or Console()
    exp = Path(experiment_dir).resolve()
    all_runs = load_runs(exp)
    selected = select_runs(all_runs, names)
    ex = SlurmExecutor()
    if not ex.has_sacct:
        say("[yellow]sacct not found: job ends are judged from squeue, job logs and run files[/yellow]",
            console=console)
    runs = {r.name: r for r in all_runs}
    sub = Submitter(exp, ex, runs, console, dry_run=dry_run)
    with experiment_lock(exp):  # one coordinator at a time judges, retries and submits (execute/claims.py)
        refresh(exp, runs, {ex.name: ex})
        handle_ended(exp, sub, runs, console)
        selected = [runs[r.name] for r in selected]
        if force and not dry_run:
            _clear_forced(exp, selected)
        todo = plan_submissions(exp, selected, force)
        if not todo:
            say("nothing to submit: every selected run is queued, running or done", console=console)
        fresh = [cfg for cfg, train, eval_, after, _ in todo if train and eval_ and after is None]
        packs = pack_groups([cfg for cfg in fresh if is_packed(cfg)])
        arrays, _ = array_groups([cfg for cfg in fresh if not is_packed(cfg)])
        reasons = {cfg.name: reason for cfg, *_, reason in todo}
        for group in packs:
            sub.submit_pack(group, reasons[group[0].name])
        for group in arrays:
            sub.submit_array(group, reasons[group[0].name])
        grouped = {cfg.name for group in arrays + packs for cfg in group}
        for cfg, train, eval_, after, reason in todo:
            if cfg.name not in grouped:
                sub.submit_run(cfg, train, eval_, reason, after)
    if wait and not dry_run:
        poll = min((slurm_settings(c).poll_interval_s for c in runs.values()), default=5.0)
        wait_for_jobs(exp, sub, runs, console, poll)
    ledger.ingest_all(exp, list(runs.values()))
    names_sel = {c.name for c in selected}
    return {r["name"]: r["state"] for r in status_rows(exp, refresh_jobs=False) if r["name"] in names_sel}
