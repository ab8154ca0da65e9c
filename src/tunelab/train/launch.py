"""One run on N processes: PyTorch's own launcher (torch.distributed.run, i.e. `torchrun`), started by the
job itself.

A job runs one command whatever the number of processes. When run.yaml asks for more than one, the job
re-launches itself under torchrun (in this process: the elastic agent spawns the workers, each runs
`python -m tunelab.train.job run.yaml` with RANK/WORLD_SIZE set). Why a self re-launch rather than
torchrun in the job script: the number of processes is decided from run.yaml (and whether this machine
has GPUs) in one place, so job.sh, job.sbatch and the local executor never need to know it, and the agent
outlives a crashed worker to say in status.json why the run failed.
"""

from __future__ import annotations

import os
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.rundir import layout
from tunelab.rundir.status import now_iso, read_status, write_status

JOB_MODULE = "tunelab.train.job"  # what the workers run: the job's own entry point

# torchrun's agent passes these on to its workers (which run in sessions of their own): its defaults plus
# SIGUSR1, Slurm's warning before the time limit, on which the trainer saves and stops (train/interrupts.py).
FORWARDED_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"


def launch(argv: list[str], nproc: int) -> None:
    """Run `python -m tunelab.train.job <argv>` on `nproc` local processes through torchrun (standalone
    rendezvous on a free local port). Raises torch's ChildFailedError when a worker fails."""
    from torch.distributed.run import get_args_parser, run

    os.environ.setdefault("TORCHELASTIC_SIGNALS_TO_HANDLE", FORWARDED_SIGNALS)
    args = get_args_parser().parse_args(
        ["--standalone", "--nnodes", "1", "--nproc-per-node", str(nproc), "--max-restarts", "0",
         "--module", JOB_MODULE, *argv])
    run(args)


def launch_run(run_dir: Path, run_yaml: Path, nproc: int, gpus: int) -> None:
    """torchrun with one process per GPU (gloo processes on CPU); a failure is one line, status.json says it."""
    if gpus and nproc > gpus:
        raise TunelabError(f"needs {nproc} processes, one per GPU, but {gpus} GPU(s) are visible "
                           f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})",
                           file=run_yaml, field="resources.nproc_per_run")
    print(f"[tunelab train] launching {nproc} processes (torchrun, {'nccl' if gpus else 'gloo'})", flush=True)
    try:
        launch([str(run_yaml)], nproc)
    except Exception as exc:  # torch's ChildFailedError: the workers printed their tracebacks already
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
