"""Live storage bytes of a step run on fake tensors, seen at the dispatcher.

`StorageTracker` is the fake-tensor mode itself (a separate mode stacked on it cost as much again per op). Only the
step's own ops count, not the fake mode's decompositions. A storage not seen before is an allocation (views and in-place
results cost nothing); a finalizer frees it when its last tensor dies, as PyTorch's allocator gets it back. Each
allocation goes through the allocator model; peaks are labelled with the step's phase.

Code that reads a value (`.item()`, `bool(t)`) gets the tracker's answer: booleans answer `uniform`, the fact behind
every such question in a step, numbers 1 (counted in `scalar_queries`); tensors with real values (values.py) answer
those. The events can be recorded and replayed (replay.py)."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch._subclasses.fake_tensor import DynamicOutputShapeException, FakeTensor, FakeTensorMode
from torch.utils._pytree import tree_leaves

from tunelab.estimate.simulator.allocator import CachingAllocatorModel
from tunelab.estimate.simulator.values import KnownValues

_SCALAR = torch.ops.aten._local_scalar_dense.default
_DEVICE = torch.ops.prim.device.default


@dataclass
class PhasePeak:
    phase: str
    allocated: int
    reserved: int


class Malloc(NamedTuple):
    """An allocation the allocator model made: its handle and size."""

    handle: int
    nbytes: int


class Free(NamedTuple):
    """An allocation given back."""

    handle: int


class Phase(NamedTuple):
    """The step entered a phase (the peaks are kept per phase)."""

    name: str


Event = Malloc | Free | Phase


@dataclass
class Recording:
    """The allocator's events in order and the scalar queries answered meanwhile."""

    events: list[Event] = field(default_factory=list)
    scalar_queries: int = 0


class StorageTracker(FakeTensorMode):
    """Fake tensors whose storages are counted through the caching-allocator model (use it as the mode)."""

    def __init__(self, uniform: bool = False) -> None:
        super().__init__(allow_non_fake_inputs=True)
        self.uniform = uniform
        self.allocator = CachingAllocatorModel()
        self.phase = "setup"
        self.peaks: dict[str, PhasePeak] = {}
        self.scalar_queries = 0
        self.values = KnownValues()
        self._live: dict[int, int] = {}  # storage address -> allocator handle
        self._depth = 0  # > 0 inside an op: what the fake mode runs for it is not counted
        self._recording: Recording | None = None

    @classmethod
    def _should_skip_dynamo(cls) -> bool:  # no dynamo guard around every dispatch (nothing here is compiled)
        return False

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.peaks.setdefault(phase, PhasePeak(phase, self.allocator.allocated, self.allocator.reserved))
        if self._recording is not None:
            self._recording.events.append(Phase(phase))

    @property
    def allocated(self) -> int:
        return self.allocator.allocated

    def track(self, t: torch.Tensor) -> None:
        """Count t's storage if it is new (an allocation)."""
        storage = t.untyped_storage()
        nbytes = storage.nbytes()
        key = storage._cdata
        if nbytes == 0 or key in self._live:
            return
        self._bind(storage, self._malloc(nbytes))

    def _malloc(self, nbytes: int) -> int:
        handle = self.allocator.malloc(nbytes)
        if self._recording is not None:
            self._recording.events.append(Malloc(handle, nbytes))
        peak = self.peaks.get(self.phase)
        if peak is None:
            self.peaks[self.phase] = PhasePeak(self.phase, self.allocator.allocated, self.allocator.reserved)
        else:
            peak.allocated = max(peak.allocated, self.allocator.allocated)
            peak.reserved = max(peak.reserved, self.allocator.reserved)
        return handle

    def _bind(self, storage: torch.UntypedStorage, handle: int) -> None:
        """The storage holds this allocation until it dies."""
        key = storage._cdata
        self._live[key] = handle
        weakref.finalize(storage, self._release, key, handle)

    def _release(self, key: int, handle: int) -> None:
        if self._live.get(key) == handle:
            del self._live[key]
            self.allocator.free(handle)
            if self._recording is not None:
                self._recording.events.append(Free(handle))

    @contextmanager
    def recording(self) -> Iterator[Recording]:
        """Record the allocator's events (and count the scalar queries) inside the block."""
        rec, queries = Recording(), self.scalar_queries
        self._recording = rec
        try:
            yield rec
        finally:
            self._recording = None
            rec.scalar_queries = self.scalar_queries - queries

    def replay(self, rec: Recording, phases: dict[str, str]) -> dict[int, int]:
        """Feed a recording's events to the allocator again, phases renamed; recorded -> new handles still live."""
        new: dict[int, int] = {}
        for event in rec.events:
            match event:
                case Malloc(handle, nbytes):
                    new[handle] = self._malloc(nbytes)
                case Free(handle):
                    self.allocator.free(new.pop(handle))
                case Phase(name):
                    self.set_phase(phases[name])
        self.scalar_queries += rec.scalar_queries
        return new

    def handle_of(self, t: torch.Tensor) -> int | None:
        """The allocation holding t's storage, if counted."""
        return self._live.get(t.untyped_storage()._cdata)

    def adopt(self, make: Callable[[], torch.Tensor], handle: int) -> torch.Tensor:
        """A tensor made uncounted whose storage then holds an allocation already made (by replay)."""
        self._depth += 1
        try:
            t = make()
        finally:
            self._depth -= 1
        self._bind(t.untyped_storage(), handle)
        return t

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self._depth or func is _DEVICE:
            return self.dispatch(func, types, args, kwargs)
        kwargs = kwargs or {}
        if func is _SCALAR:
            known = self.values.scalar(args[0])
            if known is not None:
                return known
            self.scalar_queries += 1
            return self.uniform if args[0].dtype == torch.bool else 1
        self._depth += 1
        try:
            out = self._call(func, types, args, kwargs) if self.values else self.dispatch(func, types, args, kwargs)
        finally:
            self._depth -= 1
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.track(leaf)
        return out

    def _call(self, func, types, args, kwargs):
        """The op, with known values carried along (values.py)."""
        args = self.values.rewrite_index(func, args, kwargs)
        real = self.values.run_known(func, args, kwargs)
        try:
            out = self.dispatch(func, types, args, kwargs)
        except DynamicOutputShapeException:
            if real is None:
                raise
            like = next(t for t in tree_leaves((args, kwargs)) if isinstance(t, FakeTensor))
            return self.values.fake_of(real, like)
        if real is not None:
            self.values.pair(out, real)
        return out

    def block_bytes(self, tensors: list[torch.Tensor]) -> int:
        """Allocator block bytes of these tensors' distinct storages (what they count in `allocated`)."""
        handles = {self._live[t.untyped_storage()._cdata] for t in tensors if t.untyped_storage()._cdata in self._live}
        return sum(self.allocator.block_size(h) for h in handles)

    def peak_phase(self) -> PhasePeak:
        """The phase in which allocated memory peaked."""
        return max(self.peaks.values(), key=lambda p: p.allocated)
