"""Node jobs (`resources.slurm.pack: node`): one Slurm job holds a node's GPUs and runs a group of runs on them
(`tunelab pack-job`, with the local executor's scheduler), then evaluates them.

To the coordinator each run of the group has train and eval job rows with the node job's id, judged from each run's own
files; a run that did not complete is retried as a job of its own. A multi-node run is never packed."""

from __future__ import annotations

import sys
from pathlib import Path

from tunelab.execute.executor import JobKind
from tunelab.execute.schedule import Device, RunNeed, forecast, lpt_order
from tunelab.execute.slurm_jobs import (
    _env,
    eval_time_limit,
    format_time_limit,
    nodes,
    parse_time_limit,
    sbatch_options,
    slurm_settings,
    train_time_limit,
)
from tunelab.fsutil import atomic_write_text
from tunelab.rundir.config import RunConfig

PACK_DIR = "slurm"  # <experiment>/slurm/: node-job scripts and logs (beside the array scripts)
DEFAULT_PACK_GPUS = 4
_PER_JOB = ("--job-name=", "--chdir=", "--output=", "--time=", "--gres=", "--signal=")


def is_packed(cfg: RunConfig) -> bool:
    """Trained in a node job: a fine-tuned run of one node with pack: node."""
    return cfg.kind == "finetune" and slurm_settings(cfg).pack == "node" and nodes(cfg) == 1


def pack_gpus(cfg: RunConfig) -> int:
    s = slurm_settings(cfg)
    if s.pack_gpus is not None:
        return s.pack_gpus
    return DEFAULT_PACK_GPUS if cfg.resources.gpus_per_run > 0 else 0


def _shape(cfg: RunConfig) -> tuple:
    """What must be equal for runs to share a node job: the cluster options and the node's size."""
    return tuple(o for o in sbatch_options(cfg, JobKind.TRAIN) if not o.startswith(_PER_JOB)) + (pack_gpus(cfg),)


def _need(cfg: RunConfig) -> RunNeed:
    """A run's claim on the node: its GPUs, and its training limit as the time it may hold them."""
    minutes = parse_time_limit(train_time_limit(cfg)[0])
    gpus = max(1, cfg.resources.gpus_per_run) if pack_gpus(cfg) else 1
    return RunNeed(cfg.name, gpus, minutes * 60.0, cfg.estimate.peak_memory_gib if cfg.estimate else None)


def pack_groups(cfgs: list[RunConfig]) -> list[list[RunConfig]]:
    """The node jobs for these runs: runs of one shape, longest first, at most pack_runs per job."""
    shapes: dict[tuple, list[RunConfig]] = {}
    for cfg in cfgs:
        shapes.setdefault(_shape(cfg), []).append(cfg)
    out = []
    for group in shapes.values():
        by_name = {c.name: c for c in group}
        ordered = [by_name[n.name] for n in lpt_order([_need(c) for c in group])]
        size = slurm_settings(group[0]).pack_runs or len(ordered)
        out += [ordered[i:i + size] for i in range(0, len(ordered), size)]
    return out


def pack_time_limit(cfgs: list[RunConfig]) -> str:
    """The node job's limit: the user's, else the makespan of its runs' limits plus the longest evaluation's."""
    s = slurm_settings(cfgs[0])
    if s.pack_time_limit:
        return s.pack_time_limit
    n = pack_gpus(cfgs[0])
    devices = [Device(str(i)) for i in range(n)] if n else [Device("cpu")]
    sched = forecast(devices, [_need(c) for c in cfgs], cfgs[0].resources.runs_per_gpu)
    train_min = (sched.makespan_s or 0.0) / 60.0
    evaluation = max(parse_time_limit(eval_time_limit(c)[0]) for c in cfgs)  # the longest run's evaluation
    return format_time_limit(int(train_min + 0.999) + evaluation)


def pack_options(cfgs: list[RunConfig]) -> list[str]:
    first = cfgs[0]
    exp = Path(first.experiment_dir)
    gpus = pack_gpus(first)
    s = slurm_settings(first)
    opts = [f"--job-name=tl-{first.experiment}-node"[:120], f"--chdir={exp}",
            f"--output={exp / PACK_DIR}/node-%j.out", f"--time={pack_time_limit(cfgs)}",
            *(o for o in sbatch_options(first, JobKind.TRAIN) if not o.startswith(_PER_JOB))]
    if gpus:
        opts.append(f"--gres={s.gres.rsplit(':', 1)[0] + ':' + str(gpus) if s.gres else f'gpu:{gpus}'}")
    return opts


def write_pack_script(cfgs: list[RunConfig], python: str | None = None) -> Path:
    """<experiment>/slurm/node-<first run>.sbatch: trains and evaluates these runs inside one allocation."""
    first = cfgs[0]
    exp = Path(first.experiment_dir)
    (exp / PACK_DIR).mkdir(exist_ok=True)
    s = slurm_settings(first)
    path = exp / PACK_DIR / f"node-{first.name}.sbatch"
    atomic_write_text(path, _env.get_template("node.sbatch.j2").render(
        experiment=first.experiment, experiment_dir=exp, runs=cfgs, sbatch=pack_options(cfgs), modules=s.modules,
        setup=s.setup, log_dir=exp / PACK_DIR, gpus=pack_gpus(first), python=python or sys.executable))
    path.chmod(0o755)
    return path
