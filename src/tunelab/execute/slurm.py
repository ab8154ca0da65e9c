"""The Slurm executor: submit each run's training job and its evaluation job (afterok), throttled
and staggered; follow them with squeue + sacct; classify how they ended; apply the retry policy;
cancel. Job ids live in the ledger (table `jobs`), so `tunelab run` is idempotent: it submits only
what is neither queued, running nor done.

Jobs only write files in their run directory; this coordinator reads squeue/sacct and those files
and is the only writer of tunelab.db.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from tunelab import ledger
from tunelab.errors import TunelabError
from tunelab.execute import retry
from tunelab.execute.claims import experiment_lock, holder
from tunelab.execute.failures import ACTIVE_STATES, CANCELLED, COMPLETED, SacctRow, base_state, classify
from tunelab.execute.slurm_jobs import EVAL_SCRIPT, TRAIN_SCRIPT, slurm_settings, train_time_limit, write_slurm_scripts
from tunelab.execute.progress import run_progress
from tunelab.experiment import is_evaluated, load_runs, select_runs, task_names, training_state
from tunelab.results import TYPES
from tunelab.runconfig import RunConfig, load_run_config
from tunelab.train import status as st

SACCT_START = "2000-01-01"  # sacct shows only today's jobs without -S
SACCT_FORMAT = "JobID,State,ExitCode,Elapsed,NodeList"


# ---------------------------------------------------------------- the Slurm commands

class Slurm:
    """sbatch / squeue / sacct / scancel through their command lines."""

    def __init__(self) -> None:
        missing = [c for c in ("sbatch", "squeue", "sacct", "scancel") if shutil.which(c) is None]
        if missing:
            raise TunelabError(f"Slurm commands not found: {', '.join(missing)}; on a Slurm login node they are on "
                               "PATH (for a local test cluster: scripts/slurm-dev-cluster start)")

    @staticmethod
    def _run(args: list[str], check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise TunelabError(f"`{' '.join(args)}` failed (exit {proc.returncode}): "
                               f"{(proc.stderr or proc.stdout).strip()}")
        return proc

    def submit(self, script: Path, dependency: str | None = None) -> str:
        args = ["sbatch", "--parsable"]
        if dependency:
            args += [f"--dependency=afterok:{dependency}", "--kill-on-invalid-dep=yes"]
        out = self._run(args + [str(script)]).stdout.strip()
        return out.split(";")[0]  # "ID" or "ID;cluster"

    def queue(self) -> dict[str, tuple[str, str]]:
        """{job id: (state, reason)} of every job squeue still knows (finished ones for MinJobAge)."""
        proc = self._run(["squeue", "-h", "-t", "all", "-o", "%i|%T|%r"], check=False)
        out = {}
        for line in proc.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 3:
                out[parts[0]] = (parts[1], parts[2])
        return out

    def acct(self, ids: list[str]) -> dict[str, list[SacctRow]] | None:
        """{job id: its sacct rows (job first, then steps)}; None where accounting is not available."""
        if not ids:
            return {}
        proc = self._run(["sacct", "-n", "-P", "-S", SACCT_START, "-j", ",".join(ids),
                          f"--format={SACCT_FORMAT}"], check=False)
        if proc.returncode != 0:
            return None
        out: dict[str, list[SacctRow]] = {}
        for line in proc.stdout.splitlines():
            parts = line.split("|")
            if len(parts) < 5:
                continue
            base = parts[0].split(".")[0]
            if "." not in parts[0]:
                out[base] = []  # ids can be reused after a state wipe: the newest job wins
            out.setdefault(base, []).append(SacctRow(parts[0], parts[1], parts[2], parts[3], {"node": parts[4]}))
        return out

    def cancel(self, ids: list[str]) -> None:
        if ids:
            self._run(["scancel", *ids], check=False)


# ---------------------------------------------------------------- ledger views

@dataclass
class RunJobs:
    train: dict | None
    eval: dict | None


def _jobs(exp: Path) -> list[dict]:
    return ledger.query(exp, "SELECT * FROM jobs ORDER BY id")


def latest_jobs(exp: Path) -> dict[str, RunJobs]:
    out: dict[str, RunJobs] = {}
    for j in _jobs(exp):
        rj = out.setdefault(j["run"], RunJobs(None, None))
        setattr(rj, j["kind"], j)
    return out


def is_active(job: dict | None) -> bool:
    return job is not None and base_state(job["state"]) in ACTIVE_STATES


# ---------------------------------------------------------------- refresh: squeue + sacct -> ledger

def refresh(exp: Path, slurm: Slurm, runs: dict[str, RunConfig]) -> list[dict]:
    """Bring every open job's state up to date; classify the ones that ended. Returns changed rows."""
    open_jobs = [j for j in _jobs(exp) if j["failure"] is None and j["executor"] == "slurm"]
    if not open_jobs:
        return []
    queue = slurm.queue()
    acct = slurm.acct([j["job_id"] for j in open_jobs])
    changed = []
    for j in open_jobs:
        rows = (acct or {}).get(j["job_id"], [])
        job_row = rows[0] if rows else None
        q = queue.get(j["job_id"])
        state = j["state"]
        if q:
            state = q[0]
        elif job_row:
            state = job_row.state
        ended = base_state(state) not in ACTIVE_STATES
        if ended and acct is not None and (job_row is None or base_state(job_row.state) in ACTIVE_STATES):
            # squeue says it ended, sacct has not caught up yet (it is asynchronous): ask again later
            if state != j["state"]:
                ledger.update_job(exp, j["id"], state=state)
            continue
        fields: dict[str, Any] = {"state": state}
        if job_row:
            fields.update(exit_code=job_row.exit_code, elapsed=job_row.elapsed, node=job_row.extra.get("node"))
        if ended:
            cfg = runs.get(j["run"])
            fields.update(_judge(j, cfg, state, job_row.exit_code if job_row else None, rows,
                                 q[1] if q else ""))
        if fields.get("state") != j["state"] or ended:
            ledger.update_job(exp, j["id"], **fields)
            changed.append({**j, **fields})
    return changed


def job_log(cfg: RunConfig, kind: str, job_id: str) -> Path:
    return cfg.run_dir / f"slurm-{kind}-{job_id}.out"


def _judge(job: dict, cfg: RunConfig | None, state: str, exit_code: str | None, rows: list[SacctRow],
           reason: str) -> dict:
    if cfg is None:
        f = classify(state, exit_code, rows)
        return {"failure": f.kind, "detail": f.detail}
    log = job_log(cfg, job["kind"], job["job_id"])
    text = log.read_text(errors="replace")[-200_000:] if log.is_file() else ""
    if job["kind"] == "train":
        status = st.read_status(cfg.run_dir)
        complete = training_state(cfg.run_dir) == st.COMPLETED
    else:
        status, complete = {}, is_evaluated(cfg.run_dir, task_names(cfg)) and base_state(state) == "COMPLETED"
    f = classify(state, exit_code, rows, text, status if job["kind"] == "train" else {}, complete)
    detail = f.detail
    if f.kind == CANCELLED and reason and reason not in ("None", "NonZeroExitCode"):
        detail = f"{detail} ({reason})"
    return {"failure": f.kind, "detail": detail}


# ---------------------------------------------------------------- submitting

class Submitter:
    """sbatch with throttling (resources.slurm.max_queued) and staggering (submit_delay_s)."""

    def __init__(self, exp: Path, slurm: Slurm, console: Console, dry_run: bool = False):
        self.exp, self.slurm, self.console, self.dry_run = exp, slurm, console, dry_run
        self.submitted: list[dict] = []
        self._last = 0.0

    def _active_count(self) -> int:
        queue = self.slurm.queue()
        ours = [j for j in _jobs(self.exp) if is_active(j)]
        return sum(1 for j in ours if j["job_id"] not in queue or base_state(queue[j["job_id"]][0]) in ACTIVE_STATES)

    def _throttle(self, cfg: RunConfig, needed: int) -> None:
        s = slurm_settings(cfg)
        if self.dry_run:
            return
        waited = False
        while self._active_count() + needed > s.max_queued:
            if not waited:
                self.console.print(f"[dim]{s.max_queued} jobs queued or running (max_queued): waiting…[/dim]")
                waited = True
            time.sleep(s.poll_interval_s)
        pause = s.submit_delay_s - (time.monotonic() - self._last)
        if pause > 0:
            time.sleep(pause)

    def submit_run(self, cfg: RunConfig, train: bool, eval_: bool, reason: str,
                   after: str | None = None) -> dict[str, str]:
        """Submit a run's train job and/or eval job (afterok on the train job, or on `after`)."""
        ids: dict[str, str] = {}
        if not self.dry_run:
            write_slurm_scripts(cfg)  # from run.yaml, as it is now
        self._throttle(cfg, int(train) + int(eval_))
        dep = after
        if train:
            ids["train"] = self._one(cfg, "train", TRAIN_SCRIPT, None, reason)
            dep = ids["train"]
        if eval_:
            ids["eval"] = self._one(cfg, "eval", EVAL_SCRIPT, dep, reason)
        return ids

    def _one(self, cfg: RunConfig, kind: str, script: str, dep: str | None, reason: str) -> str:
        path = cfg.run_dir / script
        if self.dry_run:
            job_id = f"<{cfg.name}:{kind}>"
            dep_txt = f" --dependency=afterok:{dep} --kill-on-invalid-dep=yes" if dep else ""
            self.console.print(f"would submit: sbatch --parsable{dep_txt} {path}  [dim]# {reason}[/dim]",
                               highlight=False, soft_wrap=True)
        else:
            job_id = self.slurm.submit(path, dep)
            self._last = time.monotonic()
            ledger.record_job(self.exp, run=cfg.name, kind=kind, job_id=job_id, attempt=cfg.attempt,
                              executor="slurm", depends_on=dep,
                              time_limit=train_time_limit(cfg)[0] if kind == "train" else None,
                              submitted_at=st.now_iso(), state="SUBMITTED", reason=reason)
            dep_txt = f" (afterok:{dep})" if dep else ""
            self.console.print(f"submitted {cfg.name} {kind} job {job_id}{dep_txt}: {reason}", highlight=False)
        self.submitted.append({"run": cfg.name, "kind": kind, "job_id": job_id, "depends_on": dep})
        return job_id


# ---------------------------------------------------------------- retries

def handle_ended(exp: Path, slurm: Slurm, sub: Submitter, runs: dict[str, RunConfig], console: Console) -> None:
    """Judge every ended, not yet handled job: record the attempt, apply the retry policy."""
    latest = latest_jobs(exp)
    for j in _jobs(exp):
        if j["handled"] or j["failure"] is None:
            continue
        cfg = runs.get(j["run"])
        if j["kind"] != "train" or cfg is None:
            ledger.update_job(exp, j["id"], handled=1)
            continue
        cfg = load_run_config(cfg.run_dir)  # the newest run.yaml
        code = None
        try:
            code = int((j["exit_code"] or "").split(":")[0])
        except ValueError:
            pass
        is_latest = latest[j["run"]].train and latest[j["run"]].train["id"] == j["id"]
        note = j["detail"]
        new_cfg = None
        if j["failure"] != COMPLETED and is_latest and not sub.dry_run:
            from tunelab.execute.failures import Failure

            decision = retry.decide(cfg, Failure(j["failure"], j["detail"] or "", code), executor="slurm")
            note = f"{j['detail']}; {decision.reason}"
            if decision.retry:
                stale_eval = latest[j["run"]].eval
                if is_active(stale_eval):  # its afterok can never be satisfied now
                    slurm.cancel([stale_eval["job_id"]])
                new_cfg = retry.apply(decision)
                runs[cfg.name] = new_cfg
        ledger.record_attempt(exp, run=j["run"], attempt=j["attempt"], executor="slurm", job_id=j["job_id"],
                              started_at=j["submitted_at"], finished_at=st.now_iso(), exit_code=code,
                              state=j["failure"], reason=note)
        ledger.update_job(exp, j["id"], handled=1, detail=note)
        if new_cfg is not None:
            console.print(f"[yellow]{j['run']}: {note}[/yellow]", highlight=False)
            sub.submit_run(new_cfg, train=True, eval_=True, reason=decision.reason)


# ---------------------------------------------------------------- tunelab run --executor slurm

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


def run_slurm(experiment_dir: str | Path, names: list[str] | None = None, force: bool = False,
              dry_run: bool = False, wait: bool = False, console: Console | None = None) -> dict[str, str]:
    """Submit what is pending; with wait, follow every job to its end (applying retries).
    Returns {run: state} (states as `tunelab status` shows them)."""
    console = console or Console()
    exp = Path(experiment_dir).resolve()
    all_runs = load_runs(exp)
    selected = select_runs(all_runs, names)
    slurm = Slurm()
    runs = {r.name: r for r in all_runs}
    with experiment_lock(exp):  # one coordinator at a time judges, retries and submits (execute/claims.py)
        refresh(exp, slurm, runs)
        sub = Submitter(exp, slurm, console, dry_run=dry_run)
        handle_ended(exp, slurm, sub, runs, console)
        selected = [runs[r.name] for r in selected]
        if force and not dry_run:
            from tunelab.execute.local import clear_outputs

            latest = latest_jobs(exp)
            for cfg in selected:
                rj = latest.get(cfg.name)
                if not (rj and (is_active(rj.train) or is_active(rj.eval))):
                    clear_outputs(cfg.run_dir)
        todo = plan_submissions(exp, selected, force)
        if not todo:
            console.print("nothing to submit: every selected run is queued, running or done")
        for cfg, train, eval_, after, reason in todo:
            sub.submit_run(cfg, train, eval_, reason, after)
    if wait and not dry_run:
        wait_for_jobs(exp, slurm, sub, runs, console)
    ledger.ingest_all(exp, list(runs.values()))
    return {r["name"]: r["state"] for r in status_rows(exp, refresh_jobs=False) if r["name"] in
            {c.name for c in selected}}


def wait_for_jobs(exp: Path, slurm: Slurm, sub: Submitter, runs: dict[str, RunConfig], console: Console) -> None:
    poll = min((slurm_settings(c).poll_interval_s for c in runs.values()), default=5.0)
    while True:
        with experiment_lock(exp):
            for j in refresh(exp, slurm, runs):
                if j.get("failure"):
                    console.print(f"{j['run']} {j['kind']} job {j['job_id']}: {j['detail']}", highlight=False)
            handle_ended(exp, slurm, sub, runs, console)
        if not any(is_active(j) for j in _jobs(exp)):
            return
        time.sleep(poll)


# ---------------------------------------------------------------- tunelab status

def status_rows(experiment_dir: str | Path, refresh_jobs: bool = True) -> list[dict]:
    """One merged record per run and control: squeue/sacct (via the ledger), and the run's files."""
    exp = Path(experiment_dir).resolve()
    all_runs = load_runs(exp)
    runs = {r.name: r for r in all_runs}
    if refresh_jobs and shutil.which("squeue"):
        with experiment_lock(exp, wait=False) as free:  # busy: a coordinator is refreshing right now
            if free:
                refresh(exp, Slurm(), runs)
    latest = latest_jobs(exp)
    out = []
    for cfg in all_runs:
        rj = latest.get(cfg.name, RunJobs(None, None))
        status = st.read_status(cfg.run_dir) if cfg.kind == "finetune" else {}
        files = training_state(cfg.run_dir) if cfg.kind == "finetune" else (
            st.COMPLETED if is_evaluated(cfg.run_dir, task_names(cfg)) else st.PENDING)
        row: dict[str, Any] = {"name": cfg.name, "type": TYPES[cfg.kind],
                               "attempt": cfg.attempt, "files": files, "job_id": None, "job_state": None,
                               "progress": "", "eta": "", "failure": None, "detail": "", "eval": None}
        job = rj.train if cfg.kind == "finetune" else rj.eval
        if job:
            row.update(job_id=job["job_id"], job_state=job["state"], failure=job["failure"])
        if rj.eval:
            row["eval"] = "scored" if is_evaluated(cfg.run_dir, task_names(cfg)) else (rj.eval["failure"] or rj.eval["state"].lower())
        elif is_evaluated(cfg.run_dir, task_names(cfg)):
            row["eval"] = "scored"
        if cfg.kind == "finetune" and status.get("attempt", cfg.attempt) == cfg.attempt:
            row["progress"], row["eta"] = run_progress(cfg, status)
        if is_active(job):
            state = base_state(job["state"]).lower()
            if state == "submitted":
                state = "pending"
        elif files == st.COMPLETED:
            state = "completed"
            if job and job["failure"] == COMPLETED and (job["detail"] or "").startswith("completed, job exit"):
                row["detail"] = job["detail"]
            row["eta"] = ""
        elif job and job["failure"]:
            state = job["failure"].upper() if job["failure"] != "failed" else "FAILED"
            row["detail"] = job["detail"] or ""
        else:
            state = files
        row["state"] = state
        out.append(row)
    return out


# ---------------------------------------------------------------- tunelab cancel

def cancel(experiment_dir: str | Path, names: list[str] | None = None, console: Console | None = None) -> list[str]:
    """scancel the queued/running jobs of the given runs (all by default); the ledger says CANCELLED."""
    console = console or Console()
    exp = Path(experiment_dir).resolve()
    all_runs = load_runs(exp)
    selected = {r.name for r in select_runs(all_runs, names)}
    slurm = Slurm()
    runs = {r.name: r for r in all_runs}
    refresh(exp, slurm, runs)
    jobs = [j for j in _jobs(exp) if j["run"] in selected and is_active(j)]
    slurm.cancel([j["job_id"] for j in jobs])
    for j in jobs:
        ledger.update_job(exp, j["id"], state="CANCELLED", failure=CANCELLED, handled=1,
                          detail="CANCELLED by tunelab cancel")
        if j["kind"] == "train":
            ledger.record_attempt(exp, run=j["run"], attempt=j["attempt"], executor="slurm", job_id=j["job_id"],
                                  started_at=j["submitted_at"], finished_at=st.now_iso(), exit_code=None,
                                  state=CANCELLED, reason="cancelled by tunelab cancel")
        console.print(f"cancelled {j['run']} {j['kind']} job {j['job_id']}", highlight=False)
    if not jobs:
        console.print("nothing to cancel: no queued or running job for these runs")
    ledger.ingest_all(exp, all_runs)
    return [j["job_id"] for j in jobs]
