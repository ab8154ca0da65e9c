"""A run's jobs as Ray jobs (execute/ray_cluster.py submits them): what each asks of the cluster, the script it
runs and the shell line Ray's job server starts it with.

Ray places a job's entrypoint on a node that has the CPUs and GPUs it asks for (`entrypoint_num_cpus`,
`entrypoint_num_gpus`), so a training job asks for what the plan priced: one GPU per process on GPUs, one CPU per
process on CPUs (the job's processes' threads then divide those — TUNELAB_RAY_CPUS, read as a Slurm job's
cpus-per-task is, host/cores.py: Ray pins a job to no core). The training job runs the run's job.sh (scaffold writes it for every
fine-tuned run); the evaluation job `ray-eval.sh`, rendered from run.yaml before every submission. A run that
trains on one node with at most one GPU (`evaluates_in_training_job`) is one Ray job, `ray-run.sh`: job.sh, then
ray-eval.sh only if it succeeded — no second dispatch, no gate (the evaluation's one GPU or CPU is the training's
own, so nothing is held idle); a run of several GPUs or nodes gets its evaluation as a job of its own, behind a gate
(execute/ray_after.py), so that its GPUs are not held while one of them evaluates. A job's output
goes to `ray-<kind>-<submission id>.out` in the run's directory, one file away, as Slurm's does; the nodes share
the filesystem the experiment lives on (as Slurm's nodes do). A run spanning nodes runs `ray-span.sh`, whose
entrypoint asks for nothing and reserves the run's nodes itself (execute/ray_span.py).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from tunelab.execute.executor import JobKind, NodeAsk
from tunelab.fsutil import atomic_write_text
from tunelab.host.cores import RAY_CPUS_ENV
from tunelab.rundir.config import RunConfig
from tunelab.spec import ResourcesSpec

TRAIN_SCRIPT, EVAL_SCRIPT, SPAN_SCRIPT, RUN_SCRIPT = "job.sh", "ray-eval.sh", "ray-span.sh", "ray-run.sh"
RUN_LABEL = "run"  # a training-then-evaluation job's submission ids and log name hold this in place of a JobKind
RDZV_ID_ENV = "TUNELAB_RDZV_ID"  # a spanning run's rendezvous id: its Ray submission id


def job_ask(cfg: RunConfig, kind: JobKind) -> NodeAsk:
    """What one node gives the job. Training: the run's GPUs on each of its nodes, one CPU per process there (the
    plan's processes, run.yaml's estimate, split over the run's nodes); evaluation: one process, at most one GPU."""
    gpus = cfg.resources.run_gpus_per_node()
    if kind != JobKind.TRAIN:
        return NodeAsk(1, min(gpus, 1))
    est = cfg.estimate
    processes = est.processes if est is not None else cfg.resources.processes_per_run(gpus)
    return NodeAsk(max(1, processes // cfg.resources.nodes_per_run), gpus)


def evaluates_in_training_job(cfg: RunConfig | ResourcesSpec) -> bool:
    """A fine-tuned run on one node with at most one GPU: its evaluation runs in its training's Ray job."""
    if isinstance(cfg, RunConfig) and cfg.kind != "finetune":  # a control is an evaluation job alone
        return False
    res = cfg if isinstance(cfg, ResourcesSpec) else cfg.resources
    return res.nodes_per_run == 1 and res.run_gpus_per_node() <= 1


def log_name(kind: JobKind | str, submission_id: str) -> str:
    """A job's log: `ray-train-…`, `ray-eval-…`, or a training-then-evaluation job's `ray-run-…` whatever part of it
    is asked for (its submission id says which it is)."""
    label = RUN_LABEL if submission_id.startswith(f"tl-{RUN_LABEL}-") else kind
    return f"ray-{label}-{submission_id}.out"


def entrypoint(run_dir: Path, script: Path, log: Path) -> str:
    """The shell line Ray starts: the job script in the run's directory, its output appended to the job's log."""
    return f"cd {shlex.quote(str(run_dir))} && exec bash {shlex.quote(str(script))} >> {shlex.quote(str(log))} 2>&1"


def job_env(ask: NodeAsk) -> dict[str, str]:
    """The job's environment on the node: offline hub, unbuffered output, and its CPUs as the count its processes'
    threads share (host/cores.py RAY_CPUS_ENV: Ray pins a job to no core); OMP_NUM_THREADS the same, marked as
    tunelab's (host/threads.py), for whatever the job runs before tunelab divides them."""
    return {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(ask.cpus),
            "TUNELAB_OMP_NUM_THREADS": str(ask.cpus), RAY_CPUS_ENV: str(ask.cpus)}


def write_eval_script(cfg: RunConfig, python: str | None = None, durable: bool = True) -> Path:
    """ray-eval.sh from run.yaml: `tunelab eval EXP --run NAME --no-ledger` in the run's directory (the coordinator
    ingests the scores; jobs never write tunelab.db)."""
    python = python or sys.executable
    q = shlex.quote
    lines = ["#!/usr/bin/env bash",
             f"# Ray evaluation job of {cfg.kind} {cfg.name!r} of experiment {cfg.experiment!r}, written by tunelab "
             "from run.yaml", "set -euo pipefail", f"cd {q(str(cfg.run_dir))}",
             'echo "[tunelab job] $(date -Is) Ray eval job on $(hostname)"',
             f'exec "${{TUNELAB_PYTHON:-{python}}}" -m tunelab eval {q(str(cfg.experiment_dir))} --run {q(cfg.name)} '
             "--no-ledger"]
    path = cfg.run_dir / EVAL_SCRIPT
    atomic_write_text(path, "\n".join(lines) + "\n", durable)
    path.chmod(0o755)
    return path


def write_run_script(cfg: RunConfig, durable: bool = True) -> Path:
    """ray-run.sh: the run's training (job.sh), then, only if it succeeded, its evaluation (ray-eval.sh), in one job."""
    lines = ["#!/usr/bin/env bash",
             f"# Ray job of run {cfg.name!r} of experiment {cfg.experiment!r}: its training, then its evaluation; written "
             "by tunelab from run.yaml", "set -euo pipefail", f"cd {shlex.quote(str(cfg.run_dir))}",
             f"bash {TRAIN_SCRIPT}", f"exec bash {EVAL_SCRIPT}"]
    path = cfg.run_dir / RUN_SCRIPT
    atomic_write_text(path, "\n".join(lines) + "\n", durable)
    path.chmod(0o755)
    return path


def write_span_script(cfg: RunConfig, ask: NodeAsk, python: str | None = None, durable: bool = True) -> Path:
    """ray-span.sh from run.yaml: the Ray job of a run spanning nodes (execute/ray_span.py), `ask` on each."""
    python, q, nodes = python or sys.executable, shlex.quote, cfg.resources.nodes_per_run
    lines = ["#!/usr/bin/env bash",
             f"# Ray training job of run {cfg.name!r} of experiment {cfg.experiment!r}, spanning {nodes} nodes; "
             "written by tunelab from run.yaml", "set -euo pipefail", f"cd {q(str(cfg.run_dir))}",
             f'echo "[tunelab job] $(date -Is) Ray train job of {nodes} nodes, driver on $(hostname), attempt '
             f'{cfg.attempt}"',
             f'exec "${{TUNELAB_PYTHON:-{python}}}" -m tunelab.execute.ray_span run.yaml {nodes} {ask.cpus} '
             f'{ask.gpus} "${{{RDZV_ID_ENV}:?}}"']
    path = cfg.run_dir / SPAN_SCRIPT
    atomic_write_text(path, "\n".join(lines) + "\n", durable)
    path.chmod(0o755)
    return path


def write_side_script(work_dir: Path, kind: JobKind, command: str) -> Path:
    """A one-off job's script (the probe's): `command`, run where Ray places it."""
    path = work_dir / f"{kind}.sh"
    text = f"#!/usr/bin/env bash\nset -euo pipefail\ncd {shlex.quote(str(work_dir))}\nexec {command}\n"
    atomic_write_text(path, text)
    return path
