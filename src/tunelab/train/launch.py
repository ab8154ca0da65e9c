"""One run on N processes: PyTorch's own launcher (torch.distributed.run, i.e. `torchrun`), started by the
job itself.

A job runs one command whatever the number of processes. When run.yaml asks for more than one, the job
re-launches itself under torchrun (in this process: the elastic agent spawns the workers, each runs
`python -m tunelab.train.job run.yaml` with RANK/WORLD_SIZE set). Why a self re-launch rather than
torchrun in the job script: the number of processes is decided from run.yaml (and whether this machine
has GPUs) in one place, so job.sh, job.sbatch and the local executor never need to know it, and the agent
outlives a crashed worker to say in status.json why the run failed.

A run that spans nodes (resources.nodes_per_run) has one job process per node, started by srun in job.sbatch;
each launches its node's processes, and the nodes meet at a c10d rendezvous (nodes.py: the arguments, pure).
Worker rank 0 alone writes run files, wherever torch's rendezvous placed it; of the job processes only the first
node's says in status.json why a launch failed. Each node prints its launch line and its rendezvous (torch's
own messages: which node joined as which rank) on its own stdout, which srun gathers into the job's log.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.host import threads
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
    """Run `python -m tunelab.train.job <argv>` on `nproc` processes of this node through torchrun: alone, a
    standalone rendezvous on a free local port; one node of several (`place`), the run's c10d rendezvous.
    Raises torch's ChildFailedError when a worker fails."""
    from torch.distributed.run import get_args_parser, run

    forward_signals()
    # each worker's threads, a share of this job's cores, before torchrun would set OMP_NUM_THREADS=1 for them
    threads.apply(threads.decide(nproc))
    if place is not None:
        _show_rendezvous()
    run(get_args_parser().parse_args(torchrun_args(place, nproc, argv)))


def forward_signals() -> None:
    """Have torchrun's agent pass FORWARDED_SIGNALS on to the workers (unless the environment says otherwise)."""
    for name in SIGNALS_ENV:
        os.environ.setdefault(name, FORWARDED_SIGNALS)


def _show_rendezvous() -> None:
    """torch's rendezvous messages (this node joining, as which rank, in which world) on stdout, as the job's own
    lines: which nodes met is the first thing to know of a run that spans nodes, and the agent logs it at INFO,
    below its default. Not propagated: torch's own handler would print each line a second time."""
    logger = logging.getLogger(RENDEZVOUS_LOGGER)
    if not any(getattr(h, "_tunelab", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("[tunelab train] rendezvous: %(message)s"))
        handler._tunelab = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def launch_run(run_dir: Path, run_yaml: Path, nproc: int, gpus: int, place: NodePlace | None = None) -> None:
    """torchrun with one process per GPU of this node (gloo processes on CPU); a failure is one line, and
    status.json says it (the first node's job process alone writes it)."""
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
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: nothing to arm
        return
    if os.getppid() == 1:  # the launcher died before the line above
        os._exit(1)
