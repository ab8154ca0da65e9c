"""One run on N processes: PyTorch's own launcher (torch.distributed.run, i.e. `torchrun`) and the few
collective operations tunelab's counters need.

`tunelab train run.yaml` stays the one command a job runs. When run.yaml asks for more than one
process it re-launches itself under torchrun (in this process: the elastic agent spawns the workers,
each runs `python -m tunelab train run.yaml` with RANK/WORLD_SIZE set). Why a self re-launch rather
than torchrun in the job script: the number of processes is decided from run.yaml (and whether this
machine has GPUs) in one place, so job.sh, job.sbatch and the local executor never need to know it, and
the agent outlives a crashed worker to say in status.json why the run failed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from tunelab.errors import TunelabError

if TYPE_CHECKING:
    from tunelab.runconfig import RunConfig

# Set by torchrun in every worker; its absence means "not launched by torchrun".
_WORLD_ENV = "WORLD_SIZE"


@dataclass(frozen=True)
class World:
    rank: int
    local_rank: int
    size: int

    @property
    def is_main(self) -> bool:
        """Only the main process writes run files (metrics, status, checkpoints, summary)."""
        return self.rank == 0


def world() -> World:
    """This process's place among the run's processes (rank 0 of 1 when not launched by torchrun)."""
    return World(int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
                 int(os.environ.get(_WORLD_ENV, 1)))


def is_worker() -> bool:
    """True inside a process that torchrun started (it must train, never launch again)."""
    return _WORLD_ENV in os.environ


def processes_per_run(nproc_per_run: int | None, gpus_per_run: int, cuda_devices: int) -> int:
    """How many processes train one run: resources.nproc_per_run when set, else one per GPU of the run
    on a GPU machine, else 1 (CPU)."""
    if nproc_per_run is not None:
        return nproc_per_run
    return max(1, gpus_per_run) if cuda_devices > 0 else 1


def strategy_of(distributed: str, world_size: int, cuda: bool) -> str | None:
    """None on one process; else "fsdp" when run.yaml says so (the plan resolves `auto` at scaffold time,
    see estimate.runs) and the processes have GPUs — accelerate shards with FSDP on accelerators only, so
    CPU processes train with DDP over gloo — and "ddp" otherwise."""
    if world_size <= 1:
        return None
    return "fsdp" if distributed == "fsdp" and cuda else "ddp"


def trainer_args(strategy: str | None, cuda: bool) -> dict[str, Any]:
    """Trainer arguments of a strategy: the Trainer (through accelerate) wraps the model in DDP or FSDP
    itself once torchrun started the processes; CPU processes talk over gloo, GPUs over NCCL."""
    if strategy is None:
        return {}
    args: dict[str, Any] = {"ddp_find_unused_parameters": False}
    if not cuda:
        args["ddp_backend"] = "gloo"
    if strategy == "fsdp":
        # PyTorch FSDP (version 2, per-parameter sharding): each decoder layer is one unit, the frozen base
        # weights and the LoRA weights sharded alike across the run's processes.
        # A full state dict at saves: the adapter files of a checkpoint look as on one device (epoch_N, resume).
        args["fsdp"] = True
        args["fsdp_config"] = {"version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                               "reshard_after_forward": True, "state_dict_type": "FULL_STATE_DICT"}
    return args


def applied_strategy(trainer) -> str | None:
    """What the trainer really wrapped the model in (not what was asked): "fsdp", "ddp" or None."""
    from torch.nn.parallel import DistributedDataParallel

    if getattr(trainer, "is_fsdp_enabled", False):
        return "fsdp"
    return "ddp" if isinstance(getattr(trainer, "model_wrapped", None), DistributedDataParallel) else None


# torchrun's agent passes these on to its workers (which run in sessions of their own): its defaults plus
# SIGUSR1, Slurm's warning before the time limit, on which the trainer saves and stops (train/interrupts.py).
FORWARDED_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"


def launch(argv: Sequence[str], nproc: int) -> None:
    """Run `python -m tunelab <argv>` on `nproc` local processes through torchrun (standalone rendezvous
    on a free local port). Raises torch's ChildFailedError when a worker fails."""
    from torch.distributed.run import get_args_parser, run

    os.environ.setdefault("TORCHELASTIC_SIGNALS_TO_HANDLE", FORWARDED_SIGNALS)

    args = get_args_parser().parse_args(
        ["--standalone", "--nnodes", "1", "--nproc-per-node", str(nproc), "--max-restarts", "0",
         "--module", "tunelab", *argv])
    run(args)


def train_job(run_yaml: Path) -> None:
    """`tunelab train run.yaml`: train here on one process, or launch the run's processes under torchrun
    (each of them comes back here as a worker and trains)."""
    from tunelab.runconfig import load_run_config
    from tunelab.train.runner import train_run

    cfg = load_run_config(run_yaml)
    if is_worker():
        die_with_launcher()
        train_run(cfg)
        return
    import torch

    from tunelab.train.gpu_sampling import GpuSampler

    gpus = torch.cuda.device_count()
    nproc = processes_per_run(cfg.resources.nproc_per_run, cfg.resources.gpus_per_run, gpus)
    from tunelab.train.interrupts import await_requeue_kill
    from tunelab.train.loop_hooks import log

    try:
        with GpuSampler(cfg.run_dir):  # NVML samples of the job's GPUs; nothing at all without NVML
            if nproc == 1:
                train_run(cfg)
            else:
                _launch_run(cfg, run_yaml, nproc, gpus)
    except BaseException:
        await_requeue_kill(cfg.run_dir, log)  # a job that requeued itself ends by Slurm's hand, not its own
        raise


def _launch_run(cfg: RunConfig, run_yaml: Path, nproc: int, gpus: int) -> None:
    """torchrun with one process per GPU (gloo processes on CPU); a failure is one line, status.json says it."""
    if gpus and nproc > gpus:
        raise TunelabError(f"needs {nproc} processes, one per GPU, but {gpus} GPU(s) are visible "
                           f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})",
                           file=run_yaml, field="resources.nproc_per_run")
    print(f"[tunelab train] launching {nproc} processes (torchrun, {'nccl' if gpus else 'gloo'})", flush=True)
    try:
        launch(["train", str(run_yaml)], nproc)
    except Exception as exc:  # torch's ChildFailedError: the workers printed their tracebacks already
        _mark_failed(cfg.run_dir, exc)
        raise TunelabError(f"distributed training failed: {_first_line(exc)}", file=run_yaml) from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _mark_failed(run_dir: Path, exc: BaseException) -> None:
    """A worker killed by the launcher never wrote why: say it in status.json if it still says running."""
    from tunelab.train import status as st

    if st.read_status(run_dir).get("state") == st.RUNNING:
        st.write_status(run_dir, state=st.FAILED, error=f"{type(exc).__name__}: {_first_line(exc)}",
                        finished_at=st.now_iso())


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


def is_initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _device() -> Any:
    import torch

    if torch.cuda.is_available():  # NCCL reduces CUDA tensors only
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce(values: Sequence[float], op: str = "sum") -> list[float]:
    """Sum (or max) of each value over all processes; the values themselves on a single process.
    Every process must call it at the same point (it is a collective)."""
    if not is_initialized():
        return list(values)
    import torch
    import torch.distributed as dist

    t = torch.tensor(list(values), dtype=torch.float64, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t.tolist()


def agree(flag: bool) -> bool:
    """True on every process when it is true on any; the flag itself on a single process. A collective: each
    process calls it at the same step. Any decision that changes what the trainer does next (a stop signal
    one rank received first, a save due by wall time) must go through it, or ranks diverge and hang."""
    return all_reduce([1.0 if flag else 0.0], "max")[0] > 0


def barrier() -> None:
    """Wait for every process (no-op on a single process)."""
    if is_initialized():
        import torch.distributed as dist

        dist.barrier()
