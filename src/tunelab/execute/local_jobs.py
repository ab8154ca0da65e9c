"""The local machine as an Executor (execute/executor.py): a job is a job script run by bash in its own
process group; its id is that process's pid. The executor that started a job knows its exit code;
another process (a `tunelab status` or `cancel` beside a running `tunelab run`) sees it running while
the pid is alive and running the run's script, and UNSEEN once it is gone (the run's files say how it ended).
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tunelab.execute.executor import UNSEEN, JobInfo
from tunelab.train import status as st

TRAIN_LOG = "train.log"


def exit_state(code: int) -> str:
    """A finished process's exit status in the scheduler's words (signal = someone stopped it)."""
    return "COMPLETED" if code == 0 else ("CANCELLED" if code < 0 else "FAILED")


def _runs_script(pid: int) -> bool:
    """Is `pid` alive and running a tunelab job (not a pid reused by something else)?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    # bash running job.sh, or what job.sh exec'd: `python -m tunelab train run.yaml`
    return b"tunelab" in cmdline or any(part.endswith((b".sh", b".sbatch")) for part in cmdline)


class LocalExecutor:
    name = "local"

    def __init__(self) -> None:
        self._procs: dict[str, subprocess.Popen] = {}

    def submit(self, script: Path, dependency: str | None = None, env: dict[str, str] | None = None) -> str:
        if dependency:
            raise ValueError("the local executor starts jobs when asked: it has no dependencies")
        run_dir = Path(script).parent
        kind = "train" if Path(script).name in ("job.sh", "job.sbatch") else "eval"
        with open(self.log(run_dir, kind, ""), "a", encoding="utf-8") as log:
            log.write(f"\n===== tunelab run: {kind} job started {st.now_iso()}"
                      + "".join(f" {k}={v}" for k, v in (env or {}).items()) + " =====\n")
            log.flush()
            proc = subprocess.Popen(["bash", str(script)], cwd=run_dir,
                                    env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})},
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._procs[str(proc.pid)] = proc
        return str(proc.pid)

    def exit_code(self, job_id: str) -> int | None:
        """The exit code of a job this executor started (negative: killed by that signal); None while running."""
        proc = self._procs.get(job_id)
        return proc.poll() if proc is not None else None

    def poll(self, ids: list[str]) -> dict[str, JobInfo]:
        out = {}
        for i in ids:
            proc = self._procs.get(i)
            code = proc.poll() if proc is not None else None
            if proc is not None and code is not None:
                out[i] = JobInfo(exit_state(code), exit_code=f"{max(code, 0)}:{max(-code, 0)}")
            elif proc is not None or (i.isdigit() and _runs_script(int(i))):
                out[i] = JobInfo("RUNNING")
            else:
                out[i] = JobInfo(UNSEEN)
        return out

    def cancel(self, ids: list[str]) -> None:
        """SIGTERM to each job's process group: the trainer saves a checkpoint at its next step and stops."""
        for i in ids:
            if i.isdigit() and (i in self._procs or _runs_script(int(i))):
                try:
                    os.killpg(int(i), signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    pass

    def log(self, run_dir: Path, kind: str, job_id: str) -> Path:
        return Path(run_dir) / (TRAIN_LOG if kind == "train" else f"{kind}.log")
