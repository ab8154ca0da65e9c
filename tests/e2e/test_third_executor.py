"""The Executor boundary (execute/executor.py): a third executor, written here and nowhere else, runs a
one-run sweep through `run_sweep` with no change to tunelab. It starts each job script as a plain child
process, one at a time, and says a job's state in Slurm's words, as the interface asks; it shares no code
with the local executor. Registering it by name (EXECUTORS) is what a new executor does to be found again
from the ledger's job rows."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tunelab.execute import executors
from tunelab.execute.executor import UNSEEN, JobGroup, JobInfo
from tunelab.execute.jobs import all_jobs
from tunelab.execute.sweep import run_sweep
from tunelab.fsutil import read_json
from tunelab.rundir.config import RunConfig
from tunelab.rundir.experiment import training_state
from tunelab.scaffold.write import scaffold
from tunelab.spec import ResourcesSpec

pytestmark = pytest.mark.slow


class OneSlot:
    """Room for one job at a time, here."""

    def order(self, runs: list[RunConfig]) -> list[RunConfig]:
        return list(runs)

    def never(self, cfg: RunConfig) -> str | None:
        return None

    def take(self, cfg: RunConfig, jobs: int, active: int) -> dict[str, str] | None:
        return {"CUDA_VISIBLE_DEVICES": ""} if active == 0 else None

    def where(self, cfg: RunConfig) -> str:
        return "the one slot"

    def release(self, run: str) -> None:
        pass

    def waiting(self) -> str:
        return "one job at a time"


class ChildProcesses:
    """Job scripts as child processes of this one; job ids are counters, logs <run dir>/child-<kind>-<id>.log."""

    name = "children"
    detached = False
    first_state = "RUNNING"

    def __init__(self) -> None:
        self.procs: dict[str, tuple[subprocess.Popen, Path]] = {}
        self.submitted: list[Path] = []

    def submit(self, script: Path, dependency: str | None = None, env: dict[str, str] | None = None,
               array: str | None = None) -> str:
        job_id = str(len(self.procs) + 1)
        log = self.log(script.parent, "train", job_id)
        with open(log, "w") as out:
            proc = subprocess.Popen(["bash", str(script)], cwd=script.parent, stdout=out, stderr=subprocess.STDOUT,
                                    env={**_environ(), **(env or {})})
        self.procs[job_id] = (proc, log)
        self.submitted.append(script)
        return job_id

    def command(self, script: Path, dependency: str | None = None, array: str | None = None) -> str:
        return f"bash {script}"

    def poll(self, ids: list[str]) -> dict[str, JobInfo] | None:
        out = {}
        for i in ids:
            if i not in self.procs:
                out[i] = JobInfo(UNSEEN)
                continue
            code = self.procs[i][0].poll()
            out[i] = (JobInfo("RUNNING") if code is None
                      else JobInfo("COMPLETED" if code == 0 else "FAILED", exit_code=f"{max(code, 0)}:{max(-code, 0)}"))
        return out

    def cancel(self, ids: list[str]) -> None:
        for i in ids:
            if i in self.procs:
                self.procs[i][0].terminate()

    def log(self, run_dir: Path, kind: str, job_id: str) -> Path:
        return Path(run_dir) / f"child-{kind}-{job_id}.log"

    def output(self, run_dir: Path, kind: str, job_id: str) -> str:
        log = self.log(run_dir, kind, job_id)
        return log.read_text(errors="replace") if log.is_file() else ""

    def poll_interval(self, runs: list[RunConfig]) -> float:
        return 0.2

    def script(self, cfg: RunConfig, kind: str, write: bool = True) -> Path:
        return cfg.run_dir / "job.sh"  # scaffold writes it for every fine-tuned run

    def time_limit(self, cfg: RunConfig) -> str | None:
        return None

    def capacity(self, runs: list[RunConfig]) -> OneSlot:
        return OneSlot()

    def groups(self, runs: list[RunConfig]) -> list[JobGroup]:
        return []

    def group_script(self, group: JobGroup, write: bool = True) -> tuple[Path, str | None]:
        raise ValueError("one job per run")

    def notices(self) -> list[str]:
        return ["child processes, one at a time"]

    def unanswered(self) -> tuple[float, str] | None:
        return None

    @staticmethod
    def job_cpus(resources: ResourcesSpec) -> int | None:
        return None

    @staticmethod
    def scaffold_scripts(cfg: RunConfig, python: str) -> None:
        pass

    @staticmethod
    def submit_all(runs: list[RunConfig]) -> tuple[str, dict[str, object]]:
        return "submit_all.sh.j2", {}

    @staticmethod
    def side_job_script(cfg: RunConfig, kind: str, work_dir: Path, command: str, time_limit: str) -> Path:
        path = work_dir / f"{kind}.sh"
        path.write_text(f"#!/usr/bin/env bash\nexec {command}\n")
        return path

    @staticmethod
    def longer_time_limit(cfg: RunConfig) -> tuple[ResourcesSpec, str] | None:
        return None


def _environ() -> dict[str, str]:
    import os

    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_a_sweep_runs_on_an_executor_defined_only_here(write_spec, monkeypatch):
    monkeypatch.setitem(executors.EXECUTORS, ChildProcesses.name, ChildProcesses)
    spec = write_spec(factors={"lora_rank": [4]}, training={"max_steps": 3, "logging_steps": 1},
                      resources={"gpus_per_run": 0})
    plan = scaffold(spec)
    (run,) = plan.finetune_runs
    ex = ChildProcesses()
    states = run_sweep(ex, plan.experiment_dir)
    assert ex.submitted == [run.run_dir / "job.sh"]  # its one job, started through its own submit
    assert training_state(run.run_dir) == "completed"
    summary = read_json(run.run_dir / "summary.json")
    assert summary["steps"] == 3  # max_steps, trained by the real job
    assert summary["step_cost"] is None  # too short a run to time steps after it (train/step_cost.py)
    assert states == {run.name: "completed"}
    (job,) = [j for j in all_jobs(plan.experiment_dir) if j.run == run.name]  # the ledger names its executor
    assert (job.executor, job.job_id, job.kind, job.state) == ("children", "1", "train", "COMPLETED")
