"""Which run trains on which GPUs, and when: one policy for the local executor and for the plan's forecast.

Longest estimated run first (LPT list scheduling), each run started when it fits the free GPUs. Runs share a GPU (up to
`runs_per_gpu`) only when every sharer's predicted peak is known and their sum stays under SHARE_FRACTION of its memory.
Pure functions: the executor feeds real completions, `plan` estimated durations."""

from __future__ import annotations

import heapq
import os
from dataclasses import dataclass, field

from tunelab import catalog  # catalog.nvidia_driver_present, looked up when called (tests inject a driver)

SHARE_FRACTION = 0.9  # sharers' predicted peaks must sum below this share of the GPU (allocator slack)


@dataclass(frozen=True)
class Device:
    id: str  # as CUDA_VISIBLE_DEVICES names it for the coordinator (an index or a GPU-UUID)
    memory_gib: float | None = None


@dataclass(frozen=True)
class RunNeed:
    name: str
    gpus: int = 1
    seconds: float | None = None  # estimated wall time (None: unknown, scheduled after the known ones)
    memory_gib: float | None = None  # predicted peak per GPU (None: unknown, never shares)
    warm_s: float = 0.0  # what its job skips of its start-up where its devices ran a job before (a warm start)


@dataclass(frozen=True)
class Placement:
    run: str
    devices: tuple[str, ...]
    start_s: float
    end_s: float | None


@dataclass
class Schedule:
    placements: list[Placement]
    makespan_s: float | None  # None when some placed run has no time estimate
    unplaceable: list[str] = field(default_factory=list)  # need more GPUs than there are


def lpt_order(needs: list[RunNeed]) -> list[RunNeed]:
    """Longest estimated run first; runs without an estimate last (in their given order)."""
    known = sorted((n for n in needs if n.seconds is not None), key=lambda n: -(n.seconds or 0.0))
    return known + [n for n in needs if n.seconds is None]


class Pool:
    """Which runs hold which GPUs now."""

    def __init__(self, devices: list[Device], runs_per_gpu: int = 1):
        self.devices = list(devices)
        self.runs_per_gpu = max(1, runs_per_gpu)
        self.holders: dict[str, dict[str, RunNeed]] = {d.id: {} for d in self.devices}

    def _can_share(self, device: Device, need: RunNeed) -> bool:
        held = self.holders[device.id]
        if not held:
            return True
        if need.gpus != 1 or len(held) >= self.runs_per_gpu or device.memory_gib is None:
            return False
        mems = [need.memory_gib] + [h.memory_gib for h in held.values()]
        known = [m for m in mems if m is not None]
        if len(known) < len(mems) or any(h.gpus != 1 for h in held.values()):
            return False
        return sum(known) <= SHARE_FRACTION * device.memory_gib

    def place(self, need: RunNeed) -> tuple[str, ...] | None:
        """Reserve GPUs for this run if it fits now (emptiest GPUs first); None if it must wait."""
        ok = [d for d in self.devices if self._can_share(d, need)]
        if len(ok) < need.gpus:
            return None
        ok.sort(key=lambda d: len(self.holders[d.id]))  # a GPU of its own before a shared one
        chosen = tuple(d.id for d in ok[:need.gpus])
        for dev in chosen:
            self.holders[dev][need.name] = need
        return chosen

    def has_empty_device(self) -> bool:
        return any(not held for held in self.holders.values())

    def release(self, run: str) -> None:
        for held in self.holders.values():
            held.pop(run, None)

    def fits_ever(self, need: RunNeed) -> bool:
        return need.gpus <= len(self.devices)


def cpu_devices(runs_at_once: int) -> list[Device]:
    """A CPU as the slots of runs side by side (resources.cpu_runs_at_once): one device, or one per share."""
    return [Device("cpu")] if runs_at_once <= 1 else [Device(f"cpu{i}") for i in range(runs_at_once)]


def forecast(devices: list[Device], needs: list[RunNeed], runs_per_gpu: int = 1) -> Schedule:
    """Simulate the executor's policy on estimated durations: placements, starts, makespan (unknown if any is)."""
    pool = Pool(devices, runs_per_gpu)
    queue = [n for n in lpt_order(needs) if pool.fits_ever(n)]
    unplaceable = [n.name for n in needs if not pool.fits_ever(n)]
    placements: list[Placement] = []
    ends: list[tuple[float, str]] = []  # heap of (end time, run)
    ran: set[str] = set()  # devices a job ran on: a later one there starts warm (RunNeed.warm_s)
    now, unknown = 0.0, False
    while queue:
        for need in list(queue):
            if runs_per_gpu <= 1 and not pool.has_empty_device():
                break  # nothing more can start before a run ends (the O(n^2) scan of a long queue)
            got = pool.place(need)
            if got is None:
                continue
            queue.remove(need)
            warm = need.warm_s if got and ran.issuperset(got) else 0.0
            ran.update(got)
            end = now + max(0.0, need.seconds - warm) if need.seconds is not None else None
            placements.append(Placement(need.name, got, now, end))
            if end is None:
                unknown = True  # holds its GPUs to the end of the forecast
            else:
                heapq.heappush(ends, (end, need.name))
        if not queue:
            break
        if not ends:  # what waits can only follow runs of unknown length
            for need in queue:
                placements.append(Placement(need.name, (), now, None))
            unknown = True
            break
        now, done = heapq.heappop(ends)
        pool.release(done)
    known_ends = [p.end_s for p in placements if p.end_s is not None]
    makespan = None if unknown else (max(known_ends) if known_ends else 0.0)
    return Schedule(placements, makespan, unplaceable)


def visible_gpus(memory_gib: list[float] | None = None) -> list[Device]:
    """The GPUs this process may use, named as CUDA_VISIBLE_DEVICES names them (indices 0..n-1 when unset),
    so a child given a subset of those names sees exactly those GPUs. memory_gib: per visible GPU."""
    if not catalog.nvidia_driver_present():
        return []
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [x.strip() for x in env.split(",") if x.strip()] if env is not None else [str(i) for i in range(n)]
    names = names[:n]
    if memory_gib is None:
        memory_gib = [torch.cuda.get_device_properties(i).total_memory / 2**30 for i in range(len(names))]
    return [Device(name, mem) for name, mem in zip(names, memory_gib)]
