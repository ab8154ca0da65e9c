"""The training job's entry point: `python -m tunelab.train.job RUN_YAML` (what job.sh, job.sbatch and `tunelab train`
run). A worker that torchrun started trains as one rank; otherwise the job decides how many processes train on this node
and trains here or launches them under torchrun (launch.py), sampling the GPUs meanwhile. A staged run takes the staged
loop (stages.py). A job that requeued itself waits for Slurm to end it."""

from __future__ import annotations

import os
import sys
from contextlib import nullcontext
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.host import threads
from tunelab.host.adapt import fit_to_free_cores
from tunelab.host.cpuload import LoadMeter
from tunelab.host.startup import skip_unused_packages
from tunelab.jobimports import Stack, import_job_stack
from tunelab.rundir.config import RunConfig, load_run_config
from tunelab.rundir.summary import Summary
from tunelab.train import TRAINING_STACK
from tunelab.train.context import HeldFiles
from tunelab.train.distributed import close_process_group, exit_finished_worker, is_worker, local_processes, log
from tunelab.train.launch import die_with_launcher, launch_run
from tunelab.train.nodes import node_place


def train(cfg: RunConfig) -> Summary | None:
    """Train the run here (a staged run: every stage to do) and complete it; its summary on the main process."""
    from tunelab.train.interrupts import SignalWatch
    from tunelab.train.runner import complete_run, train_run
    from tunelab.train.stages import train_stages

    held = HeldFiles.of(cfg.run_dir)  # the run files this job writes, each read at most once
    # a stop signal outside training's own watch only sets a flag until status.json says how the run ended: before
    # training, training stops at its first step; after it (a pruned trial cancelled at its last validation), the run
    # completes, as it nearly has, rather than dying with status.json still saying running
    job_watch = SignalWatch().install()
    try:
        if cfg.stages:
            return train_stages(cfg, held)
        trained = train_run(cfg, held=held)
        return complete_run(cfg.run_dir, trained.summary, held.status) if trained is not None else None
    finally:
        job_watch.restore()


def train_job(run_yaml: Path) -> None:
    """Train here on one process, or launch this node's processes of the run under torchrun."""
    cfg = load_run_config(run_yaml)
    if is_worker():
        die_with_launcher()
        train(cfg)
        close_process_group()
        exit_finished_worker()
    import torch

    from tunelab.train.gpu_sampling import GpuSampler
    from tunelab.train.interrupts import await_requeue_kill

    place = node_place(os.environ, cfg.resources.nodes_per_run, Path(run_yaml))  # None: the run has one node
    gpus = torch.cuda.device_count()
    nproc = cfg.resources.processes_per_node(gpus)
    # NVML samples of the job's GPUs (nothing at all without NVML), by one job process: gpu_samples.jsonl is one file
    sampler = GpuSampler(cfg.run_dir) if place is None or place.is_first else nullcontext()
    try:
        with sampler:
            if nproc == 1 and place is None:
                train(cfg)
            else:
                launch_run(cfg.run_dir, Path(run_yaml), nproc, gpus, place)
    except BaseException:
        await_requeue_kill(cfg.run_dir, log)  # a job that requeued itself ends by Slurm's hand, not its own
        raise


def import_training_stack() -> None:
    """This process's threads decided before torch loads (a torchrun rank: its share of the job's cores;
    tunelab/host/threads.py), then the training stack imported; where others held cores meanwhile, fewer threads."""
    skip_unused_packages()  # before TRL is imported
    planned = threads.decide(local_processes())
    threads.apply(planned)
    meter = LoadMeter.start(threads=planned.torch)  # the load on its cores over its imports (host/adapt.py)
    import_job_stack(*TRAINING_STACK, record_as=Stack.TRAINING)
    fit_to_free_cores(planned, meter)  # others held cores as it started: threads for the cores left


def run_job(run_yaml: Path) -> int:
    """The job once its stack is imported (here, or by the warm process it was forked from: train/warm.py): its exit
    status, a TunelabError one line on stderr and 1."""
    try:
        train_job(run_yaml)
    except TunelabError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m tunelab.train.job RUN_YAML`: a TunelabError is one line on stderr and exit status 1."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m tunelab.train.job RUN_YAML (a run's run.yaml or its directory)", file=sys.stderr)
        return 2
    import_training_stack()
    return run_job(Path(args[0]))


if __name__ == "__main__":
    sys.exit(main())
