"""One run on N processes: the job re-launches itself under torchrun (the elastic agent in this process spawns the
workers, each running `python -m tunelab.train.job run.yaml`).

Why not torchrun in the job script: the process count is decided from run.yaml in one place, so job scripts and
executors never need it, and the agent outlives a crashed worker to say in status.json why the run failed. A run that
spans nodes has one job process per node (srun), meeting at a c10d rendezvous (nodes.py); worker rank 0 alone writes run
files."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.host import threads
from tunelab.host.process import die_with_parent
from tunelab.rundir import layout
from tunelab.rundir.status import now_iso, read_status, write_status
from tunelab.train.nodes import NodePlace, torchrun_args

RENDEZVOUS_LOGGER = "torch.distributed.elastic.rendezvous.dynamic_rendezvous"

# torchrun's agent passes these on to its workers (which run in sessions of their own): its defaults plus
# SIGUSR1, Slurm's warning before the time limit, on which the trainer saves and stops (train/interrupts.py).
# torch reads them from TORCHELASTIC_SIGNALS_TO_HANDLE, and since its --signals-to-handle option (whose default
# overwrites that variable) from PET_SIGNALS_TO_HANDLE, the option's environment form: both are set.
FORWARDED_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
SIGNALS_ENV = ("TORCHELASTIC_SIGNALS_TO_HANDLE", "PET_SIGNALS_TO_HANDLE")


def launch(argv: list[str], nproc: int, place: NodePlace | None = None) -> None:
    """Run `python -m tunelab.train.job <argv>` on `nproc` processes through torchrun: alone a standalone rendezvous,
    one node of several (`place`) the run's c10d rendezvous. Raises ChildFailedError when a worker fails."""
    from torch.distributed.run import get_args_parser, run

    forward_signals()
    # each worker's threads, a share of this job's cores, before torchrun would set OMP_NUM_THREADS=1 for them
    threads.apply(threads.decide(nproc))
    if place is not None:
        _show_rendezvous()
    with tempfile.TemporaryDirectory(prefix="tunelab-torchrun-") as logs:  # gone with the launch
        run(get_args_parser().parse_args(torchrun_args(place, nproc, argv, logs)))


def forward_signals() -> None:
    """Have torchrun's agent pass FORWARDED_SIGNALS on to the workers (unless the environment says otherwise)."""
    for name in SIGNALS_ENV:
        os.environ.setdefault(name, FORWARDED_SIGNALS)


def _show_rendezvous() -> None:
    """torch's rendezvous messages on stdout as the job's own lines (which nodes met is the first thing to know of a
    multi-node run; the agent logs it below its default level). Not propagated: torch's handler would repeat it."""
    logger = logging.getLogger(RENDEZVOUS_LOGGER)
    if not any(getattr(h, "_tunelab", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("[tunelab train] rendezvous: %(message)s"))
        handler._tunelab = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def launch_run(run_dir: Path, run_yaml: Path, nproc: int, gpus: int, place: NodePlace | None = None) -> None:
    """torchrun with one process per GPU (gloo processes on CPU); a failure is one line, said in status.json."""
    if gpus and nproc > gpus:
        raise TunelabError(f"needs {nproc} processes, one per GPU, but {gpus} GPU(s) are visible "
                           f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})",
                           file=run_yaml, field="resources.nproc_per_run")
    backend = "nccl" if gpus else "gloo"
    if place is None:
        print(f"[tunelab train] launching {nproc} processes (torchrun, {backend})", flush=True)
    else:
        print(f"[tunelab train] node {place.node_rank} of {place.nodes} ({socket.gethostname()}): launching "
              f"{nproc} process(es) (torchrun, {backend}), c10d rendezvous {place.endpoint} id {place.job_id}",
              flush=True)
    try:
        launch([str(run_yaml)], nproc, place)
    except Exception as exc:  # torch's ChildFailedError: the workers printed their tracebacks already
        if place is None or place.is_first:
            _mark_failed(run_dir, exc)
        raise TunelabError(f"distributed training failed: {_first_line(exc)}", file=run_yaml) from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _mark_failed(run_dir: Path, exc: BaseException) -> None:
    """A worker killed by the launcher never wrote why: say it in status.json if it still says running."""
    if read_status(run_dir).state == layout.RUNNING:
        write_status(run_dir, state=layout.FAILED, error=f"{type(exc).__name__}: {_first_line(exc)}",
                     finished_at=now_iso())


def die_with_launcher() -> None:
    """A worker dies with its launcher (Linux PR_SET_PDEATHSIG): torchrun starts workers in sessions of their
    own, so a SIGKILL of the job's process group (or of the agent) would otherwise leave them training."""
    if not die_with_parent(signal.SIGKILL):  # not Linux: nothing to arm
        return
    if os.getppid() == 1:  # the launcher died before the line above
        os._exit(1)
