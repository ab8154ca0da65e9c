"""Slurm job scripts of a run, rendered from its run.yaml: `job.sbatch` trains, `eval.sbatch` evaluates. They hold
nothing run.yaml does not and are rendered again before every submission, never patched.

A multi-node run asks for N nodes and starts one job process per node with srun. A failure on any node ends the job
(--kill-on-bad-exit), and it runs with --no-requeue, so a lost node ends it NODE_FAIL for tunelab's retry instead of
Slurm requeueing it unseen; it still requeues itself on the time-limit warning."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined

from tunelab.execute.executor import JobKind
from tunelab.fsutil import atomic_write_text
from tunelab.rundir.config import RunConfig
from tunelab.spec import SlurmSpec

TRAIN_SCRIPT, EVAL_SCRIPT = "job.sbatch", "eval.sbatch"
DEFAULT_TRAIN_TIME_LIMIT = "04:00:00"
DEFAULT_EVAL_TIME_LIMIT = "01:00:00"

_env = Environment(loader=PackageLoader("tunelab.scaffold", "templates"), undefined=StrictUndefined,
                   keep_trailing_newline=True)
_env.filters["q"] = lambda v: shlex.quote(str(v))


def slurm_settings(cfg: RunConfig) -> SlurmSpec:
    return cfg.resources.slurm or SlurmSpec()


def estimated_time_limit(cfg: RunConfig) -> str | None:
    """The planner's time limit in run.yaml (None without an estimate), used when the user sets none."""
    return cfg.estimate.slurm_time_limit if cfg.estimate else None


def eval_time_limit(cfg: RunConfig) -> tuple[str, str]:
    """(time limit, where it came from) of the run's evaluation job: the user's slurm.eval_time_limit, else the
    plan's prediction (its worst case × margin, forecast/evalrun.py, in run.yaml), else the default hour."""
    s = slurm_settings(cfg)
    if s.eval_time_limit:
        return s.eval_time_limit, "slurm.eval_time_limit"
    if cfg.estimate is not None and cfg.estimate.eval_slurm_time_limit:
        return cfg.estimate.eval_slurm_time_limit, "the plan's evaluation prediction"
    return DEFAULT_EVAL_TIME_LIMIT, "default (no evaluation prediction)"


def train_time_limit(cfg: RunConfig) -> tuple[str, str]:
    """(time limit, source): the user's (a TIMEOUT retry writes longer), else the planner's, else a default."""
    s = slurm_settings(cfg)
    if s.time_limit:
        return s.time_limit, "run.yaml resources.slurm.time_limit"
    est = estimated_time_limit(cfg)
    if est:
        return est, "planner estimate"
    return DEFAULT_TRAIN_TIME_LIMIT, "tunelab default; set resources.slurm.time_limit"


def parse_time_limit(text: str) -> int:
    """Slurm time limit -> minutes: 'M', 'M:S', 'H:M:S', 'D-H', 'D-H:M', 'D-H:M:S' (seconds round up)."""
    days = 0
    if "-" in text:
        d, text = text.split("-", 1)
        days = int(d)
        parts = [int(p) for p in text.split(":")]
        parts += [0] * (3 - len(parts))
        h, m, s = parts
    else:
        parts = [int(p) for p in text.split(":")]
        if len(parts) == 1:
            h, m, s = 0, parts[0], 0
        elif len(parts) == 2:
            h, m, s = 0, parts[0], parts[1]
        else:
            h, m, s = parts
    return days * 1440 + h * 60 + m + (1 if s else 0)


def format_time_limit(minutes: int) -> str:
    d, rest = divmod(max(1, minutes), 1440)
    h, m = divmod(rest, 60)
    return f"{d}-{h:02d}:{m:02d}:00" if d else f"{h:02d}:{m:02d}:00"


def warning_seconds(time_limit: str, wanted_s: int) -> int:
    """Seconds before the limit for Slurm's SIGUSR1: the wanted lead, at most half the limit; 0 = none."""
    return min(wanted_s, parse_time_limit(time_limit) * 60 // 2) if wanted_s > 0 else 0


def nodes(cfg: RunConfig) -> int:
    """The nodes the run's training job spans (resources.nodes_per_run)."""
    return cfg.resources.nodes_per_run


def job_name(cfg: RunConfig, kind: JobKind) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", f"tl-{cfg.experiment}-{cfg.name}-{kind}")[:120]


def sbatch_options(cfg: RunConfig, kind: JobKind) -> list[str]:
    """The #SBATCH options of a run's train or eval job, from run.yaml alone. Slurm's gres, cpus-per-task and
    mem are per node (one task per node): a run spanning nodes asks each node for its share of the GPUs."""
    s = slurm_settings(cfg)
    limit = train_time_limit(cfg)[0] if kind == JobKind.TRAIN else eval_time_limit(cfg)[0]
    spans = kind == JobKind.TRAIN and nodes(cfg) > 1
    opts = [
        f"--job-name={job_name(cfg, kind)}",
        f"--chdir={cfg.run_dir}",
        f"--output={cfg.run_dir}/slurm-{kind}-%j.out",
        f"--time={limit}",
        *([f"--nodes={nodes(cfg)}", "--ntasks-per-node=1"] if spans else ["--nodes=1", "--ntasks=1"]),
    ]
    for flag, value in (("account", s.account), ("partition", s.partition), ("qos", s.qos),
                        ("constraint", s.constraint), ("cpus-per-task", s.cpus_per_task), ("mem", s.mem)):
        if value is not None:
            opts.append(f"--{flag}={value}")
    gpus = cfg.resources.run_gpus_per_node()
    gres = s.gres or (f"gpu:{gpus}" if gpus > 0 else None)
    if gres:
        opts.append(f"--gres={gres}")
    if kind == JobKind.TRAIN:
        # requeued (self, preemption, node failure) under the same id: its log continues, afterok holds. A job
        # spanning nodes only requeues itself: a lost node ends it NODE_FAIL, for tunelab's retry (module docstring)
        opts += ["--no-requeue" if spans else "--requeue", "--open-mode=append"]
        warn = warning_seconds(limit, s.signal_before_limit_s)
        if warn:
            opts.append(f"--signal=B:USR1@{warn}")
    opts.extend(s.extra_sbatch)
    return opts


def write_side_job_script(cfg: RunConfig, kind: JobKind, work_dir: Path, command: str, time_limit: str) -> Path:
    """A one-off sbatch script (work_dir/<kind>.sbatch) on the run's partition and resources, one node."""
    keep = ("--account", "--partition", "--qos", "--constraint", "--cpus-per-task", "--mem", "--gres")
    opts = [o for o in sbatch_options(cfg, JobKind.EVAL) if o.startswith(keep)]
    opts = [f"--job-name=tl-{cfg.experiment}-{kind}"[:120], f"--chdir={work_dir}",
            f"--output={work_dir}/slurm-{kind}-%j.out", f"--time={time_limit}", "--nodes=1", "--ntasks=1", *opts]
    lines = ["#!/usr/bin/env bash", f"# tunelab {kind} job of experiment {cfg.experiment}",
             *(f"#SBATCH {o}" for o in opts), "set -euo pipefail",
             'export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}" '
             'TUNELAB_OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"',  # tunelab's: the job divides it (threads.py)
             f"exec {command}"]
    path = work_dir / f"{kind}.sbatch"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def write_slurm_scripts(cfg: RunConfig, python: str | None = None, durable: bool = True) -> list[Path]:
    """(Re)write the run's job.sbatch (fine-tuned runs) and eval.sbatch from its run.yaml."""
    python = python or sys.executable
    s = slurm_settings(cfg)
    common = dict(run=cfg, run_dir=cfg.run_dir, python=python, modules=s.modules, setup=s.setup)
    written = []
    if cfg.kind == "finetune":
        limit, source = train_time_limit(cfg)
        path = cfg.run_dir / TRAIN_SCRIPT
        atomic_write_text(path, _env.get_template("job.sbatch.j2").render(
            sbatch=sbatch_options(cfg, JobKind.TRAIN), time_limit=limit, time_limit_source=source,
            nodes=nodes(cfg), **common), durable)
        path.chmod(0o755)
        written.append(path)
    path = cfg.run_dir / EVAL_SCRIPT
    atomic_write_text(path, _env.get_template("eval.sbatch.j2").render(
        sbatch=sbatch_options(cfg, JobKind.EVAL), experiment_dir=cfg.experiment_dir, **common), durable)
    path.chmod(0o755)
    written.append(path)
    return written
