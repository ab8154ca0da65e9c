"""Slurm through its command lines (sbatch, squeue, sacct, scancel), as an Executor (execute/executor.py).

squeue is the authority on live jobs; sacct tells how ended jobs ended (exit codes of every step) but
updates asynchronously, may be missing (no accounting) or failing (slurmdbd down). `merge` turns both
views into one JobInfo per job, so that no job stays "active" forever: a job squeue answered for and no
longer lists has ended, whatever sacct says or fails to say.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.execute.executor import UNSEEN, JobInfo
from tunelab.execute.failures import ACTIVE_STATES, SacctRow, base_state

SACCT_START = "2000-01-01"  # sacct shows only today's jobs without -S
SACCT_FORMAT = "JobID,State,ExitCode,Elapsed,NodeList"


def merge(queued: tuple[str, str] | None, queue_ok: bool, rows: list[SacctRow], acct_ok: bool) -> JobInfo | None:
    """One job's state from squeue's (state, reason) and sacct's rows; None when nothing can be said.
    - squeue lists it: its state; once ended, `settled` only when sacct has the ended job too (or is
      unavailable: then there is nothing to wait for).
    - squeue answered without it: it has ended (Slurm forgets finished jobs after MinJobAge); sacct's
      ended state if it has one, else UNSEEN (the run's files and log will say how it ended).
    - squeue failed: sacct alone, if it knows the job."""
    job = rows[0] if rows else None
    extra = dict(exit_code=job.exit_code, elapsed=job.elapsed, node=job.extra.get("node")) if job else {}
    acct_ended = job is not None and base_state(job.state) not in ACTIVE_STATES
    if queued is not None:
        state, reason = queued
        ended = base_state(state) not in ACTIVE_STATES
        return JobInfo(state, reason=reason, rows=tuple(rows), settled=not ended or acct_ended or not acct_ok,
                       **extra)
    if queue_ok:
        return JobInfo(job.state if acct_ended else UNSEEN, rows=tuple(rows) if acct_ended else (),
                       **(extra if acct_ended else {}))
    return JobInfo(job.state, rows=tuple(rows), **extra) if job else None


class SlurmExecutor:
    """sbatch / squeue / sacct / scancel. sacct is optional: without it jobs are judged from squeue and
    the run's files."""

    name = "slurm"

    def __init__(self) -> None:
        missing = [c for c in ("sbatch", "squeue", "scancel") if shutil.which(c) is None]
        if missing:
            raise TunelabError(f"Slurm commands not found: {', '.join(missing)}; on a Slurm login node they are on "
                               "PATH (for a local test cluster: scripts/slurm-dev-cluster start)")
        self.has_sacct = shutil.which("sacct") is not None
        self.unanswered_since: float | None = None  # monotonic time squeue started failing (execute/submit.py)
        self.last_error = ""

    @staticmethod
    def _run(args: list[str], check: bool = True) -> subprocess.CompletedProcess:
        try:
            proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            if check:
                raise TunelabError(f"`{' '.join(args)}` did not answer within 120 s") from None
            return subprocess.CompletedProcess(args, 124, "", "timeout")
        if check and proc.returncode != 0:
            raise TunelabError(f"`{' '.join(args)}` failed (exit {proc.returncode}): "
                               f"{(proc.stderr or proc.stdout).strip()}")
        return proc

    def submit(self, script: Path, dependency: str | None = None, env: dict[str, str] | None = None,
               array: str | None = None) -> str:
        args = ["sbatch", "--parsable"]
        if dependency:
            args += [f"--dependency=afterok:{dependency}", "--kill-on-invalid-dep=yes"]
        if array:
            args.append(f"--array={array}")
        if env:
            args.append("--export=ALL," + ",".join(f"{k}={v}" for k, v in env.items()))
        out = self._run(args + [str(script)]).stdout.strip()
        return out.split(";")[0]  # "ID" or "ID;cluster"

    def queue(self) -> dict[str, tuple[str, str]] | None:
        """{job id: (state, reason)} of every job squeue knows (finished ones for MinJobAge); None when
        squeue failed. Array tasks are listed as ARRAYID_TASK (%i), pending ranges as ARRAYID_[1-4]."""
        proc = self._run(["squeue", "-h", "-t", "all", "-r", "-o", "%i|%T|%r"], check=False)
        if proc.returncode != 0:
            self.last_error = f"squeue exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[:200]}"
            if self.unanswered_since is None:
                self.unanswered_since = time.monotonic()
            return None
        self.unanswered_since = None
        out = {}
        for line in proc.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 3:
                out[parts[0]] = (parts[1], parts[2])
        return out

    def acct(self, ids: list[str]) -> dict[str, list[SacctRow]] | None:
        """{job id: its sacct rows (job first, then steps)}; None where accounting is missing or failing."""
        if not ids:
            return {}
        if not self.has_sacct:
            return None
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

    def poll(self, ids: list[str]) -> dict[str, JobInfo] | None:
        if not ids:
            return {}
        queue = self.queue()
        acct = self.acct(ids)
        if queue is None and acct is None:
            return None
        out = {}
        for i in ids:
            info = merge((queue or {}).get(i), queue is not None, (acct or {}).get(i, []), acct is not None)
            if info is not None:
                out[i] = info
        return out

    def cancel(self, ids: list[str]) -> None:
        if ids:
            self._run(["scancel", *ids], check=False)

    def log(self, run_dir: Path, kind: str, job_id: str) -> Path:
        return Path(run_dir) / f"slurm-{kind}-{job_id}.out"


Slurm = SlurmExecutor  # the name older code and tests use
