"""The local machine as an Executor: a job is a job script run by bash in its own process group, its id that pid (inside
`warm_starts`, the search's trials, a training job forked in its own process group from a warm process instead:
execute/warm_jobs.py).
Another process (`tunelab status` beside `tunelab run`) sees it running while the pid runs the run's script, and UNSEEN
once it is gone (the run's files say how it ended).

Its capacity is this machine's devices: GPUs are placed by execute/schedule.py, each job given its GPUs as
CUDA_VISIBLE_DEVICES; without GPUs, resources.cpu_runs_at_once runs side by side, each given its share of the cores as
TUNELAB_CPUS, so runs never spin more threads than there are cores. A multi-node run is refused."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tunelab.execute.executor import UNSEEN, Capacity, JobInfo, JobKind, OneJobEachRun, ScriptCheck
from tunelab.execute.job_states import JobState
from tunelab.execute.schedule import Device, Pool, RunNeed, lpt_order, visible_gpus
from tunelab.execute.warm_jobs import WarmJob, WarmProcesses
from tunelab.host.cores import CPUS_ENV, cpu_list, job_shares
from tunelab.host.process import signal_group
from tunelab.rundir import now_iso
from tunelab.rundir.config import RunConfig
from tunelab.spec import ResourcesSpec

TRAIN_LOG = "train.log"
TRAIN_SCRIPT = "job.sh"
ATTEMPT_MARK = "===== tunelab run:"  # starts each local attempt's lines in train.log
CPU = Device("cpu")


def exit_state(code: int) -> JobState:
    """A finished process's exit status in the scheduler's words (signal = someone stopped it)."""
    return JobState.COMPLETED if code == 0 else (JobState.CANCELLED if code < 0 else JobState.FAILED)


def _runs_script(pid: int) -> bool:
    """Is `pid` alive and running a tunelab job (not a pid reused by something else)?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    # bash running job.sh, or what job.sh exec'd: `python -m tunelab.train.job run.yaml` (or `-m tunelab ...`)
    return any(part == b"tunelab" or part.startswith(b"tunelab.") or part.endswith((b".sh", b".sbatch"))
               for part in cmdline)


def run_need(cfg: RunConfig, gpus_visible: int) -> RunNeed:
    """What the scheduler needs of a run: its GPUs (one per process), its estimated time and peak memory."""
    est = cfg.estimate
    gpus = cfg.resources.processes_per_run(gpus_visible) if gpus_visible else 1
    return RunNeed(cfg.name, gpus, est.seconds if est else None, est.peak_memory_gib if est else None)


def spans_nodes(cfg: RunConfig) -> str:
    """Why the local executor refuses a run spanning nodes: it runs jobs on this one machine."""
    return (f"{cfg.run_dir / 'run.yaml'}: resources.nodes_per_run is {cfg.resources.nodes_per_run}, and the local "
            "executor runs a run on this machine alone: use the Slurm executor (--executor slurm), or set "
            "resources.nodes_per_run: 1")


def cpu_slots(runs_at_once: int) -> dict[str, list[int]]:
    """The CPU as slots for runs side by side, each a share of the usable cores cut along physical cores."""
    shares = job_shares(runs_at_once)
    return {CPU.id if len(shares) == 1 else f"cpu:{cpu_list(share)}": share for share in shares}


class Devices:
    """This machine's devices as a sweep's capacity: the visible GPUs, or CPU slots (cpu_runs_at_once)."""

    def __init__(self, runs: list[RunConfig]) -> None:
        gpus = visible_gpus()
        self.on_gpu = bool(gpus)
        first = runs[0].resources if runs else None  # the first run's resources: one choice per sweep
        per_device = (first.runs_per_gpu if gpus else first.cpu_runs()) if first else 1
        self.cpus = {} if gpus else cpu_slots(per_device)
        self.pool = Pool(gpus, per_device) if gpus else Pool([Device(slot) for slot in self.cpus])
        self.visible = len(gpus)
        self._where: dict[str, str] = {}

    def order(self, runs: list[RunConfig]) -> list[RunConfig]:
        by_name = {c.name: c for c in runs}
        return [by_name[need.name] for need in lpt_order([run_need(c, self.visible) for c in runs])]

    def never(self, cfg: RunConfig) -> str | None:
        if cfg.resources.nodes_per_run > 1:
            return spans_nodes(cfg)
        need = run_need(cfg, self.visible)
        if self.pool.fits_ever(need):
            return None
        return (f"needs {need.gpus} GPUs, {self.visible} visible "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")

    def take(self, cfg: RunConfig, jobs: int, active: int) -> dict[str, str] | None:
        got = self.pool.place(run_need(cfg, self.visible))
        if got is None:
            return None
        slot = ",".join(got)
        if self.on_gpu:
            self._where[cfg.name] = f"GPU {slot}"
            return {"CUDA_VISIBLE_DEVICES": slot}
        self._where[cfg.name] = slot
        return self.slot_env(slot)

    def slot_env(self, slot: str) -> dict[str, str]:
        """What a job on this CPU slot is given: its share of the cores (nothing where one slot holds them all)."""
        return {CPUS_ENV: cpu_list(self.cpus[slot])} if len(self.cpus) > 1 else {}

    def where(self, cfg: RunConfig) -> str:
        return self._where.get(cfg.name, "")

    def release(self, run: str) -> None:
        self.pool.release(run)

    def waiting(self) -> str:
        return ""  # runs wait for a free device: nothing to say


class LocalExecutor(OneJobEachRun):
    """Job scripts as subprocesses of this process: the sweep follows them to their end."""

    name = "local"
    detached = False
    first_state = JobState.RUNNING  # a job's state once `submit` returned

    def __init__(self) -> None:
        self._procs: dict[str, subprocess.Popen | WarmJob] = {}
        self._warm: WarmProcesses | None = None
        self._accept: ScriptCheck | None = None

    @contextmanager
    def warm_starts(self, accept: ScriptCheck | None = None) -> Iterator[None]:
        """Inside, a training job (job.sh as tunelab wrote it: the search's trials; a sweep's runs whose job.sh
        `accept` passes) is forked from a process that keeps the training stack imported, one per environment
        (execute/warm_jobs.py); they end with the block."""
        outer, self._warm = self._warm, self._warm or WarmProcesses()
        outer_accept, self._accept = self._accept, accept
        try:
            yield
        finally:
            if outer is None:
                self._warm.close()
            self._warm, self._accept = outer, outer_accept

    def warm_ahead(self) -> None:
        if self._warm is not None and not visible_gpus():  # a GPU job's lane is its devices: started at its first job
            self._warm.prepare(self._job_env(None))

    def _starts_warm(self, script: Path, job_env: dict[str, str]) -> bool:
        """Inside warm_starts, a run's job.sh; in a sweep's block (a check given), one the check passes, where the
        warm process was started beforehand (`capacity`: its imports beside the sweep's checks, not after them)."""
        if self._warm is None or script.name != TRAIN_SCRIPT:
            return False
        return self._accept is None or (self._warm.has(job_env) and self._accept(script))

    @staticmethod
    def _job_env(env: dict[str, str] | None) -> dict[str, str]:
        return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}  # job.sh's too

    def submit(self, script: Path, dependency: str | None = None, env: dict[str, str] | None = None,
               array: str | None = None) -> str:
        if dependency or array:
            raise ValueError("the local executor starts jobs when asked: it has no dependencies or arrays")
        run_dir = Path(script).parent
        kind = JobKind.TRAIN if Path(script).name in (TRAIN_SCRIPT, "job.sbatch") else JobKind.EVAL
        job_env = self._job_env(env)
        log_path = self.log(run_dir, kind, "")
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"\n{ATTEMPT_MARK} {kind} job started {now_iso()}"
                      + "".join(f" {k}={v}" for k, v in (env or {}).items()) + " =====\n")
            log.flush()
            warm = (self._warm.start(run_dir / "run.yaml", log_path, job_env)
                    if self._warm is not None and self._starts_warm(Path(script), job_env) else None)
            if warm is not None:
                self._procs[str(warm.pid)] = warm
                return str(warm.pid)
            proc = subprocess.Popen(["bash", str(script)], cwd=run_dir, env=job_env,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._procs[str(proc.pid)] = proc
        return str(proc.pid)

    def command(self, script: Path, dependency: str | None = None, array: str | None = None) -> str:
        return f"bash {script}"

    def exit_code(self, job_id: str) -> int | None:
        """The exit code of a job this executor started (negative: killed by that signal); None while running."""
        proc = self._procs.get(job_id)
        return proc.poll() if proc is not None else None

    def poll(self, ids: list[str]) -> dict[str, JobInfo] | None:
        out = {}
        for i in ids:
            proc = self._procs.get(i)
            code = proc.poll() if proc is not None else None
            if proc is not None and code is not None:
                out[i] = JobInfo(exit_state(code), exit_code=f"{max(code, 0)}:{max(-code, 0)}")
            elif (proc is not None and not (isinstance(proc, WarmJob) and proc.lost)) \
                    or (i.isdigit() and _runs_script(int(i))):
                out[i] = JobInfo(JobState.RUNNING)
            else:
                out[i] = JobInfo(UNSEEN)
        return out

    def cancel(self, ids: list[str]) -> None:
        """SIGTERM to each job's process group: the trainer saves a checkpoint at its next step and stops."""
        for i in ids:
            if i.isdigit() and (i in self._procs or _runs_script(int(i))):
                signal_group(int(i), signal.SIGTERM)

    def log(self, run_dir: Path, kind: JobKind, job_id: str) -> Path:
        return Path(run_dir) / (TRAIN_LOG if kind == JobKind.TRAIN else f"{kind}.log")

    def output(self, run_dir: Path, kind: JobKind, job_id: str) -> str:
        """This attempt's lines: train.log holds every attempt of the run, each started by ATTEMPT_MARK."""
        log = self.log(run_dir, kind, job_id)
        text = log.read_text(errors="replace")[-100_000:] if log.is_file() else ""
        start = text.rfind(ATTEMPT_MARK)
        return text[start:] if start >= 0 else text

    def poll_interval(self, runs: list[RunConfig]) -> float:
        return 0.5

    def script(self, cfg: RunConfig, kind: JobKind, write: bool = True) -> Path:
        if kind != JobKind.TRAIN:
            raise ValueError("the local executor trains; `tunelab eval` evaluates")
        return cfg.run_dir / TRAIN_SCRIPT

    def time_limit(self, cfg: RunConfig) -> str | None:
        return None

    @staticmethod
    def job_cpus(resources: ResourcesSpec) -> int | None:
        """The CPUs a job gets: this machine's (None: not set by tunelab)."""
        return None

    @staticmethod
    def side_job_script(cfg: RunConfig, kind: JobKind, work_dir: Path, command: str, time_limit: str) -> Path:
        """work_dir/<kind>.sh running `command` here (no time limit: local jobs run until they end)."""
        path = work_dir / f"{kind}.sh"
        path.write_text(f"#!/usr/bin/env bash\nset -euo pipefail\nexec {command}\n")
        return path

    @staticmethod
    def longer_time_limit(cfg: RunConfig) -> tuple[ResourcesSpec, str] | None:
        """Local jobs run until they end: no limit to lengthen."""
        return None

    @staticmethod
    def scaffold_scripts(cfg: RunConfig, python: str) -> None:
        """Nothing beyond job.sh, which scaffold writes for every fine-tuned run."""
    def capacity(self, runs: list[RunConfig]) -> Capacity:
        """This machine's devices; in a sweep's warm_starts block on a CPU, the warm process started now if a run that
        may start warm is there (one for every lane: each forked job takes its lane's share; a GPU sweep's jobs start
        as bash starts them)."""
        devices = Devices(runs)
        if self._warm is not None and self._accept is not None and not devices.on_gpu:
            if any(self._accept(cfg.run_dir / TRAIN_SCRIPT) for cfg in runs):
                self._warm.prepare(self._job_env(None))
        return devices

    def unanswered(self) -> tuple[float, str] | None:
        return None
