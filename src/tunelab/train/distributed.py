"""The collective operations of a run on N processes (ranks, all-reduce of counters, agreement, barrier) and
the Trainer arguments of DDP / FSDP. The launch of those processes is job.py's (launch.py)."""

from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from tunelab.spec.resources import Strategy


def log(msg: str) -> None:
    if world().is_main:  # one line per event, not one per process
        try:
            print(f"[tunelab train] {msg}", flush=True)
        except OSError:  # the log's disk is full: the run's own writes say so (NoSpaceError), not a progress line
            pass


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


def local_processes() -> int:
    """The run's processes on this node (LOCAL_WORLD_SIZE, else 1), which share its cores."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", 1))


def is_worker() -> bool:
    """True inside a process that torchrun started (it must train, never launch again)."""
    return _WORLD_ENV in os.environ


def trainer_args(strategy: Strategy | None, cuda: bool) -> dict[str, Any]:
    """Trainer arguments of a strategy: the Trainer wraps the model in DDP once torchrun started the processes; FSDP is
    applied by tunelab (train/sharding.py), since accelerate honours it on accelerators only."""
    if strategy is None:
        return {}
    args: dict[str, Any] = {"ddp_find_unused_parameters": False}
    if not cuda:
        args["ddp_backend"] = "gloo"
    return args


def is_initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _device() -> Any:
    import torch

    if torch.cuda.is_available():  # NCCL reduces CUDA tensors only
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce(values: Sequence[float], op: str = "sum") -> list[float]:
    """Sum (or max) of each value over all processes (a collective: every process calls it at the same point)."""
    if not is_initialized():
        return list(values)
    import torch
    import torch.distributed as dist

    t = torch.tensor(list(values), dtype=torch.float64, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t.tolist()


def all_gather_text(text: str) -> list[str]:
    """Every process's `text`, by rank (a collective; one process: its own)."""
    if not is_initialized():
        return [text]
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, text)
    return [str(t) for t in out]


def agree(flag: bool) -> bool:
    """True on every process when true on any, a collective; decisions that change the trainer's next step use it."""
    return all_reduce([1.0 if flag else 0.0], "max")[0] > 0


def barrier() -> None:
    """Wait for every process (no-op on a single process)."""
    if is_initialized():
        import torch.distributed as dist

        dist.barrier()


def close_process_group() -> None:
    """End a worker's process group once every rank has finished (no-op on one process). Left to interpreter exit,
    gloo's threads can be torn down still joinable, the runtime aborts and the launcher reports a finished run
    failed."""
    if is_initialized():
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


def exit_finished_worker() -> NoReturn:
    """End a finished torchrun worker with status 0 after the exit steps user code observes (threads joined, atexit
    handlers) and before module teardown and static destructors, where finished ranks aborted (SIGABRT) and torchrun
    judged the run failed: gloo's threads stop only when the ProcessGroup is freed, and DTensor's module caches hold it
    until teardown, in whatever order. tests/e2e/test_fsdp.py checks that atexit handlers run."""
    for thread in threading.enumerate():  # what Python's own exit waits for first
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # then the atexit handlers, in their order (last registered first)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)
