"""Following submitted jobs: judge each ended job once, apply the retry policy (execute/retry.py) and
resubmit, and (`--wait`) loop until every job has a verdict. Executor-neutral: it reads the ledger and
talks to jobs through a Submitter's executor.

`--wait` ends: every job reaches a verdict in bounded time (execute/refresh.py), and a scheduler that
stops answering ends the wait with an error (execute/submit.py, check_reachable).
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from tunelab import ledger
from tunelab.console import say
from tunelab.execute import retry
from tunelab.execute.claims import experiment_lock
from tunelab.execute.failures import COMPLETED, Failure
from tunelab.execute.jobs import all_jobs, is_active, is_open, latest_jobs
from tunelab.execute.refresh import refresh
from tunelab.execute.submit import Submitter, check_reachable
from tunelab.runconfig import RunConfig, load_run_config
from tunelab.train import status as st


def _exit_code(job: dict) -> int | None:
    try:
        return int((job["exit_code"] or "").split(":")[0])
    except ValueError:
        return None


def handle_ended(exp: Path, sub: Submitter, runs: dict[str, RunConfig], console: Console) -> None:
    """Judge every ended, not yet handled job: record the attempt, apply the retry policy."""
    latest = latest_jobs(exp)
    for j in all_jobs(exp):
        if j["handled"] or j["failure"] is None:
            continue
        cfg = runs.get(j["run"])
        if j["kind"] != "train" or cfg is None:
            ledger.update_job(exp, j["id"], handled=1)
            continue
        cfg = load_run_config(cfg.run_dir)  # the newest run.yaml
        code = _exit_code(j)
        is_latest = latest[j["run"]].train and latest[j["run"]].train["id"] == j["id"]
        note = j["detail"]
        new_cfg = None
        if j["failure"] != COMPLETED and is_latest and not sub.dry_run:
            decision = retry.decide(cfg, Failure(j["failure"], j["detail"] or "", code), executor=j["executor"])
            note = f"{j['detail']}; {decision.reason}"
            if decision.retry:
                stale_eval = latest[j["run"]].eval
                if is_active(stale_eval):  # its afterok can never be satisfied now
                    sub.ex.cancel([stale_eval["job_id"]])
                new_cfg = retry.apply(decision)
                runs[cfg.name] = new_cfg
        ledger.record_attempt(exp, run=j["run"], attempt=j["attempt"], executor=j["executor"], job_id=j["job_id"],
                              started_at=j["submitted_at"], finished_at=st.now_iso(), exit_code=code,
                              state=j["failure"], reason=note)
        ledger.update_job(exp, j["id"], handled=1, detail=note)
        if new_cfg is not None:
            say("[yellow]{}: {}[/yellow]", j["run"], note, console=console)
            sub.submit_run(new_cfg, train=True, eval_=True, reason=decision.reason)


def wait_for_jobs(exp: Path, sub: Submitter, runs: dict[str, RunConfig], console: Console, poll_s: float) -> None:
    """Refresh, judge and retry until no job of this experiment is open (active or waiting for a verdict)."""
    while True:
        with experiment_lock(exp):
            for j in refresh(exp, runs, {sub.ex.name: sub.ex}):
                if j.get("failure"):
                    say("{} {} job {}: {}", j["run"], j["kind"], j["job_id"], j["detail"], console=console)
            handle_ended(exp, sub, runs, console)
        if not any(is_open(j) for j in all_jobs(exp) if j["executor"] == sub.ex.name):
            return
        check_reachable(sub.ex)
        time.sleep(poll_s)
