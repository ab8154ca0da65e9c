"""Slurm through its command lines (sbatch, squeue, sacct, scancel), as an Executor. squeue is the authority on live
jobs; sacct tells how ended jobs ended but lags, may be missing or failing. `merge` makes one JobInfo of both, so no
job stays "active" forever; a failing query means "unknown, look again", never "gone". Every sbatch carries a token
in --comment: a submission whose answer was lost is looked up by it before anything is submitted again, so no run
gets two jobs."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.execute.executor import (
    UNSEEN,
    Capacity,
    ColdStarts,
    GroupKind,
    JobGroup,
    JobInfo,
    JobKind,
    SchedulerRoom,
    SchedulerUnavailable,
)
from tunelab.execute.failures import SacctRow
from tunelab.execute.job_states import JobState, is_active_state
from tunelab.execute.slurm_jobs import (
    EVAL_SCRIPT,
    TRAIN_SCRIPT,
    _env,
    format_time_limit,
    nodes,
    parse_time_limit,
    sbatch_options,
    slurm_settings,
    train_time_limit,
    write_side_job_script,
    write_slurm_scripts,
)
from tunelab.execute.slurm_pack import PACK_DIR, is_packed, pack_groups, write_pack_script
from tunelab.fsutil import atomic_write_text
from tunelab.rundir.config import RunConfig
from tunelab.spec import ResourcesSpec, SlurmSpec

ARRAY_DIR = "slurm"  # <experiment>/slurm/: array scripts and their tasks' logs
_PER_RUN = ("--job-name=", "--chdir=", "--output=")


def shape(cfg: RunConfig) -> tuple[str, ...]:
    """A training job's sbatch options without what names its run: equal shapes can share one array."""
    return tuple(o for o in sbatch_options(cfg, JobKind.TRAIN) if not o.startswith(_PER_RUN))


def array_groups(cfgs: list[RunConfig]) -> tuple[list[list[RunConfig]], list[RunConfig]]:
    """(arrays, singles): runs of one shape with array_max_running set, two or more a group; multi-node runs alone."""
    groups: dict[tuple, list[RunConfig]] = {}
    singles = []
    for cfg in cfgs:
        if slurm_settings(cfg).array_max_running and nodes(cfg) == 1:
            groups.setdefault(shape(cfg), []).append(cfg)
        else:
            singles.append(cfg)
    arrays = [g for g in groups.values() if len(g) > 1]
    singles += [g[0] for g in groups.values() if len(g) == 1]
    return arrays, singles


def array_spec(cfgs: list[RunConfig]) -> str:
    """sbatch's --array value: every task, at most array_max_running at once."""
    return f"0-{len(cfgs) - 1}%{slurm_settings(cfgs[0]).array_max_running}"


def write_array_script(cfgs: list[RunConfig], python: str | None = None) -> Path:
    """<experiment>/slurm/train-array-<first run>.sbatch for these runs (same shape), rendered from run.yaml."""
    first = cfgs[0]
    exp = Path(first.experiment_dir)
    log_dir = exp / ARRAY_DIR
    log_dir.mkdir(exist_ok=True)
    s = slurm_settings(first)
    opts = [f"--job-name=tl-{first.experiment}-train-array"[:120], f"--chdir={exp}",
            f"--output={log_dir}/train-%A_%a.out", *shape(first)]
    path = log_dir / f"train-array-{first.name}.sbatch"
    atomic_write_text(path, _env.get_template("train_array.sbatch.j2").render(
        experiment=first.experiment, runs=cfgs, sbatch=opts, max_running=s.array_max_running, modules=s.modules,
        setup=s.setup, runs_dir=first.run_dir.parent, log_dir=log_dir, python=python or sys.executable))
    path.chmod(0o755)
    return path


SACCT_START = "2000-01-01"  # sacct shows only today's jobs without -S
SACCT_FORMAT = "JobID,State,ExitCode,Elapsed,NodeList"
SQUEUE_FORMAT = "JobArrayID:|,State:|,Reason:|,RestartCnt:"  # array tasks as ARRAYID_TASK (with -r)
# What Slurm's clients say when the controller does not answer (restarting, failing over, overloaded)
UNREACHABLE = ("Unable to contact slurm controller", "Socket timed out", "Zero Bytes were transmitted",
               "backup controller in standby mode", "Transport endpoint is not connected")
NEVER_SENT = "(connect failure)"  # no connection was made: the controller never saw the request
TOKEN = "tunelab:"  # --comment=tunelab:<token> names one submission


def merge(queued: tuple[str, str] | tuple[str, str, int] | None, queue_ok: bool, rows: list[SacctRow],
          acct_ok: bool) -> JobInfo | None:
    """One job's state from squeue's (state, reason) and sacct's rows; None when nothing can be said. Listed by squeue:
    its state (settled once sacct has the end too). Answered without it: ended, sacct's state or UNSEEN. squeue failed:
    sacct alone. Exit code, time and node come from an ended accounting record only."""
    job = rows[0] if rows else None
    acct_ended = job is not None and not is_active_state(job.state)

    def info(state: str, with_acct: bool, **more: Any) -> JobInfo:
        if job is None or not with_acct:
            return JobInfo(state, **more)
        if not acct_ended:  # a live record's exit code and elapsed time say nothing of how the job ends
            return JobInfo(state, rows=tuple(rows), **more)
        return JobInfo(state, job.exit_code, job.elapsed, job.extra.get("node"), rows=tuple(rows), **more)

    if queued is not None:
        state, reason = queued[0], queued[1]
        ended = not is_active_state(state)
        return info(state, True, reason=reason, settled=not ended or acct_ended or not acct_ok)
    if queue_ok:
        return info(job.state if job is not None and acct_ended else UNSEEN, acct_ended)
    return info(job.state, True) if job is not None else None


def unsure_token(script: Path, key: str | None, token: str | None = None) -> str | None:
    """The token of an sbatch of `script` whose answer was lost, in a file beside it so it outlives the process: read it
    (`key`: another dependency's token is not this submission's), keep one (`token`), or forget it (None)."""
    path = script.with_name(f".{script.name}.sbatch-token")
    if key is None:
        path.unlink(missing_ok=True)
        return None
    if token is not None:
        atomic_write_text(path, f"{key}\n{token}\n")
        return token
    try:
        kept, _, rest = path.read_text().partition("\n")
    except FileNotFoundError:
        return None
    return (rest.strip() or None) if kept == key else None


class Throttle(SchedulerRoom):
    """Slurm's room for a sweep: at most slurm.max_queued jobs active, submissions submit_delay_s apart."""

    def __init__(self) -> None:
        self._last = 0.0
        self._full: int | None = None

    def never(self, cfg: RunConfig) -> str | None:
        return None

    def take(self, cfg: RunConfig, jobs: int, active: int) -> dict[str, str] | None:
        s = slurm_settings(cfg)
        if active + jobs > s.max_queued:
            self._full = s.max_queued
            return None
        pause = s.submit_delay_s - (time.monotonic() - self._last)
        if pause > 0:
            time.sleep(pause)
        self._last = time.monotonic()
        return {}

    def waiting(self) -> str:
        return f"{self._full} jobs queued or running (max_queued): waiting…" if self._full is not None else ""


class SlurmExecutor(ColdStarts):
    """sbatch / squeue / sacct / scancel; without sacct, jobs are judged from squeue and the run's files."""

    name = "slurm"
    detached = True
    first_state = JobState.SUBMITTED  # a job's state once `submit` returned

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
        """sbatch, tagged with a token. SchedulerUnavailable when the controller did not answer; where it may have taken
        the job, the token is kept (unsure_token) and the next submission finds that job instead of a second one."""
        key = f"{dependency}|{array}"
        token = unsure_token(script, key)
        if token is not None:
            found = self._find(token)
            if found is not None:
                unsure_token(script, None)
                return found
        token = token or uuid.uuid4().hex[:16]
        args = ["sbatch", "--parsable", f"--comment={TOKEN}{token}"]
        if dependency:
            args += [f"--dependency=afterok:{dependency}", "--kill-on-invalid-dep=yes"]
        if array:
            args.append(f"--array={array}")
        if env:
            args.append("--export=ALL," + ",".join(f"{k}={v}" for k, v in env.items()))
        proc = self._run(args + [str(script)], check=False)
        said = (proc.stderr or proc.stdout).strip()
        if proc.returncode == 0:
            unsure_token(script, None)
            return proc.stdout.strip().split(";")[0]  # "ID" or "ID;cluster"
        if proc.returncode == 124 or any(word in said for word in UNREACHABLE):
            if NEVER_SENT not in said:
                unsure_token(script, key, token)  # it may exist: look for it before submitting again
            self._silent(f"sbatch: {said[:200]}")
            raise SchedulerUnavailable(f"sbatch could not reach the Slurm controller ({said[:200]}); "
                                       "tried again at the next look")
        raise TunelabError(f"`{' '.join(args + [str(script)])}` failed (exit {proc.returncode}): {said}")

    def _find(self, token: str) -> str | None:
        """The job an earlier sbatch with this token made, if any; SchedulerUnavailable when squeue cannot say."""
        proc = self._run(["squeue", "-h", "-t", "all", "-o", "%F|%k"], check=False)
        if proc.returncode != 0:
            self._silent(f"squeue exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[:200]}")
            raise SchedulerUnavailable("squeue could not say whether an unanswered sbatch made a job")
        for line in proc.stdout.splitlines():
            job, _, comment = line.strip().partition("|")
            if comment == f"{TOKEN}{token}":
                return job
        return None

    def _silent(self, error: str) -> None:
        """The controller did not answer: remember since when (check_reachable ends a wait after too long)."""
        self.last_error = error
        if self.unanswered_since is None:
            self.unanswered_since = time.monotonic()

    def command(self, script: Path, dependency: str | None = None, array: str | None = None) -> str:
        dep = f" --dependency=afterok:{dependency} --kill-on-invalid-dep=yes" if dependency else ""
        return f"sbatch --parsable{dep}{f' --array={array}' if array else ''} {script}"

    def queue(self) -> dict[str, tuple[str, str, int]] | None:
        """{job id: (state, reason, restarts)} of every job squeue knows (finished ones for MinJobAge); None
        when squeue failed. Array tasks are listed as ARRAYID_TASK, pending ranges as ARRAYID_[1-4]."""
        proc = self._run(["squeue", "-h", "-t", "all", "-r", "-O", SQUEUE_FORMAT], check=False)
        if proc.returncode != 0:
            self._silent(f"squeue exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[:200]}")
            return None
        self.unanswered_since = None
        out = {}
        for line in proc.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 4:
                out[parts[0]] = (parts[1], parts[2], int(parts[3]) if parts[3].isdigit() else 0)
        return out

    def acct(self, ids: list[str]) -> dict[str, list[SacctRow]] | None:
        """{job id: its sacct rows (job first, then steps)}; None where accounting is missing or failing."""
        records = self.acct_records(ids)
        return None if records is None else records[0]

    def acct_records(self, ids: list[str]) -> tuple[dict[str, list[SacctRow]], dict[str, list[str]]] | None:
        """({job id: its newest start's rows, job first}, {job id: how its earlier starts ended, oldest
        first}) from `sacct -D` (every start of a requeued job); None where accounting is missing or failing."""
        if not ids:
            return {}, {}
        if not self.has_sacct:
            return None
        proc = self._run(["sacct", "-n", "-P", "-D", "-S", SACCT_START, "-j", ",".join(ids),
                          f"--format={SACCT_FORMAT}"], check=False)
        if proc.returncode != 0:
            return None
        out: dict[str, list[SacctRow]] = {}
        earlier: dict[str, list[str]] = {}
        for line in proc.stdout.splitlines():
            parts = line.split("|")
            if len(parts) < 5:
                continue
            base = parts[0].split(".")[0]
            if "." not in parts[0]:
                if out.get(base):  # a start before this one (a requeue), or a job before an id reuse
                    earlier.setdefault(base, []).append(out[base][0].state)
                out[base] = []  # the newest start wins
            out.setdefault(base, []).append(SacctRow(parts[0], parts[1], parts[2], parts[3], {"node": parts[4]}))
        return out, earlier

    def poll(self, ids: list[str]) -> dict[str, JobInfo] | None:
        if not ids:
            return {}
        queue = self.queue()
        records = self.acct_records(ids)
        if queue is None and records is None:
            return None
        acct, earlier = records if records is not None else (None, {})
        out = {}
        for i in ids:
            queued = (queue or {}).get(i)
            info = merge(queued, queue is not None, (acct or {}).get(i, []), acct is not None)
            if info is not None and queued is not None and queued[2] > 0:
                info = dataclasses.replace(info, restarts=queued[2], earlier=tuple(earlier.get(i, [])[-queued[2]:]))
            if info is not None:
                out[i] = info
        return out

    def cancel(self, ids: list[str]) -> None:
        if ids:
            self._run(["scancel", *ids], check=False)

    def log(self, run_dir: Path, kind: JobKind, job_id: str) -> Path:
        return Path(run_dir) / f"slurm-{kind}-{job_id}.out"

    def output(self, run_dir: Path, kind: JobKind, job_id: str) -> str:
        log = self.log(run_dir, kind, job_id)
        return log.read_text(errors="replace")[-200_000:] if log.is_file() else ""

    def poll_interval(self, runs: list[RunConfig]) -> float:
        return min((slurm_settings(c).poll_interval_s for c in runs), default=5.0)

    def script(self, cfg: RunConfig, kind: JobKind, write: bool = True) -> Path:
        if write:
            write_slurm_scripts(cfg)  # from run.yaml, as it is now
        return cfg.run_dir / (TRAIN_SCRIPT if kind == JobKind.TRAIN else EVAL_SCRIPT)

    def time_limit(self, cfg: RunConfig) -> str | None:
        return train_time_limit(cfg)[0]

    @staticmethod
    def job_cpus(resources: ResourcesSpec) -> int | None:
        """The CPUs a job gets: resources.slurm.cpus_per_task (None: Slurm's default)."""
        return resources.slurm.cpus_per_task if resources.slurm is not None else None

    @staticmethod
    def side_job_script(cfg: RunConfig, kind: JobKind, work_dir: Path, command: str, time_limit: str) -> Path:
        return write_side_job_script(cfg, kind, work_dir, command, time_limit)

    @staticmethod
    def longer_time_limit(cfg: RunConfig) -> tuple[ResourcesSpec, str] | None:
        """resources.slurm.time_limit set to twice the limit the job ran under (given or estimated)."""
        old = train_time_limit(cfg)[0]
        new = format_time_limit(2 * parse_time_limit(old))
        slurm = (cfg.resources.slurm or SlurmSpec()).model_copy(update={"time_limit": new})
        return cfg.resources.model_copy(update={"slurm": slurm}), f"time limit {old} -> {new}"

    @staticmethod
    def evaluates_in_training_job(resources: ResourcesSpec) -> bool:  # slurm.pack: node: the node job evaluates
        return resources.slurm is not None and resources.slurm.pack == "node"

    @staticmethod
    def scaffold_scripts(cfg: RunConfig, python: str) -> None:
        """job.sbatch and eval.sbatch from run.yaml (not fsynced: a rerun of scaffold writes them again)."""
        write_slurm_scripts(cfg, python, durable=False)

    @staticmethod
    def submit_all(runs: list[RunConfig]) -> tuple[str, dict[str, object]]:
        """submit_all.sh's template: sbatch every training job and its evaluation (afterok), every control's."""
        delay = slurm_settings(runs[0]).submit_delay_s if runs else None
        return "submit_all_slurm.sh.j2", {"delay": delay or None}

    def capacity(self, runs: list[RunConfig]) -> Capacity:
        return Throttle()

    def groups(self, runs: list[RunConfig]) -> list[JobGroup]:
        """Node jobs, then job arrays of runs of one shape; a multi-node run joins neither (a job of its own)."""
        packs = pack_groups([cfg for cfg in runs if is_packed(cfg)])
        arrays, _ = array_groups([cfg for cfg in runs if not is_packed(cfg)])
        return ([JobGroup(GroupKind.NODE, tuple(g)) for g in packs]
                + [JobGroup(GroupKind.ARRAY, tuple(g)) for g in arrays])

    def group_script(self, group: JobGroup, write: bool = True) -> tuple[Path, str | None]:
        cfgs = list(group.runs)
        exp = Path(cfgs[0].experiment_dir)
        if write:
            for cfg in cfgs:
                write_slurm_scripts(cfg)  # each run's own scripts: its evaluation, and retries as jobs of their own
        if group.kind == GroupKind.NODE:
            return (write_pack_script(cfgs) if write else exp / PACK_DIR / f"node-{cfgs[0].name}.sbatch"), None
        path = write_array_script(cfgs) if write else exp / ARRAY_DIR / f"train-array-{cfgs[0].name}.sbatch"
        return path, array_spec(cfgs)

    def notices(self) -> list[str]:
        if self.has_sacct:
            return []
        return ["[yellow]sacct not found: job ends are judged from squeue, job logs and run files[/yellow]"]

    def unanswered(self) -> tuple[float, str] | None:
        if self.unanswered_since is None:
            return None
        return time.monotonic() - self.unanswered_since, self.last_error
