"""Kill points for the fault benchmark (benchmarks/faults.py): a process SIGKILLs itself at a chosen
moment, so every interruption a job can suffer (mid-step, mid-save, mid-write, mid-transaction) is
reproduced for real and deterministically, then the normal commands are rerun and checked.

TUNELAB_FAULT_KILL="POINT[#N],..." kills this process the N-th time (default 1) it reaches POINT. A point
is a name ("ledger.ingest") or a name and a label ("train.step:17", "write:checkpoint-40/tunelab_counters.json").
Before dying, the process appends "POINT pid" to the file $TUNELAB_FAULT_FIRED (when set), so the benchmark
knows which kill really happened. Unset, as always outside the benchmark, a point costs one test of a dict.
"""

from __future__ import annotations

import os
import signal
import time

TEST_KNOBS = ("TUNELAB_FAULT_", "TUNELAB_DEBUG_")  # every test-only knob's prefix (train/loop_hooks.DEBUG_SEEN_ENV too)
KILL_ENV = "TUNELAB_FAULT_KILL"
FIRED_ENV = "TUNELAB_FAULT_FIRED"


def parse_targets(text: str) -> dict[str, int]:
    """{point: the hit that kills} from the KILL_ENV syntax."""
    targets: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        point, _, nth = item.partition("#")
        targets[point] = int(nth) if nth else 1
    return targets


_TARGETS = parse_targets(os.environ.get(KILL_ENV, ""))
_hits: dict[str, int] = {}


def kill_point(name: str, label: str | None = None) -> None:
    """A moment the fault benchmark may kill this process at (no-op unless KILL_ENV names it)."""
    if not _TARGETS:
        return
    for point in (name,) if label is None else (name, f"{name}:{label}"):
        if point in _TARGETS:
            _hits[point] = _hits.get(point, 0) + 1
            if _hits[point] == _TARGETS[point]:
                _die(point)


def _die(point: str) -> None:
    fired = os.environ.get(FIRED_ENV)
    if fired:
        with open(fired, "a", encoding="utf-8") as fh:
            fh.write(f"{point} {os.getpid()}\n")
            fh.flush()
            os.fsync(fh.fileno())
    os.kill(os.getpid(), signal.SIGKILL)


# Test-only knob: a run whose micro-batch exceeds N fails as a GPU out-of-memory would, so the retry policy
# (halve the micro-batch) and the probe's largest-batch search can be proven on machines without a GPU.
FAULT_OOM_ENV = "TUNELAB_FAULT_OOM_ABOVE_BATCH"


def inject_oom_fault(batch_size: int) -> None:
    """Raise torch's OutOfMemoryError when FAULT_OOM_ENV is set below this micro-batch (no-op unset)."""
    limit = os.environ.get(FAULT_OOM_ENV, "").strip()
    if limit and batch_size > int(limit):
        import torch

        raise torch.OutOfMemoryError(
            f"CUDA out of memory. Tried to allocate 1.95 GiB (injected: micro-batch {batch_size} > "
            f"{FAULT_OOM_ENV}={limit})")


# Test-only knob: every training micro-batch lasts at least this many seconds (the rest is slept), as a step
# waiting on a GPU does. A test that needs a job to be running for a while (to reach a Slurm time limit, or to
# be cancelled, warned or requeued mid-epoch) then spends that time idle, not training on a CPU it shares.
FAULT_STEP_S_ENV = "TUNELAB_FAULT_STEP_S"
_STEP_S = float(os.environ.get(FAULT_STEP_S_ENV, "").strip() or 0)


def pace_step(started: float) -> None:
    """Sleep out the rest of FAULT_STEP_S_ENV seconds since `started` (time.monotonic()); no-op unset."""
    if _STEP_S > 0:
        time.sleep(max(0.0, started + _STEP_S - time.monotonic()))
