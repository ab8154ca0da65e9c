"""Job arrays: the first training jobs of runs with identical sbatch options go to Slurm as one array, throttled by
Slurm (`%array_max_running`). Each task is a job of its own to the rest of tunelab (ARRAYID_i); retries use the run's
own job.sbatch. A multi-node run never goes into an array: it needs its own srun script."""

from __future__ import annotations

import sys
from pathlib import Path

from tunelab.execute.executor import JobKind
from tunelab.execute.slurm_jobs import _env, nodes, sbatch_options, slurm_settings
from tunelab.fsutil import atomic_write_text
from tunelab.rundir.config import RunConfig

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
