"""Live storage bytes of a step run on fake tensors, seen at the dispatcher.

Every op's outputs pass through `StorageTracker.__torch_dispatch__`. A storage not seen before is an
allocation (views and in-place results share their input's storage and cost nothing); a finalizer on the
storage frees it when the last tensor using it dies, exactly when PyTorch's allocator would get it back.
Each allocation goes through the caching-allocator model, so both `max_memory_allocated` and
`max_memory_reserved` are known. Peaks are labelled with the phase of the step they happened in.

Fake tensors carry no values, so code that reads one (`.item()`, `bool(t)`) gets an answer from the
tracker instead (`_local_scalar_dense`): booleans answer `uniform`, the fact that decides every such
question in a training step (transformers' "is the mask all ones / is there a single sequence per row",
TRL's "is any label valid"), numbers answer 1. The answers are counted in `scalar_queries`. Tensors whose
real values were given (a vision-language step's input_ids and image grids: values.py) answer those values.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
from torch._subclasses.fake_tensor import DynamicOutputShapeException
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from tunelab.estimate.simulator.allocator import CachingAllocatorModel
from tunelab.estimate.simulator.values import KnownValues


@dataclass
class PhasePeak:
    phase: str
    allocated: int
    reserved: int


@dataclass
class StorageTracker(TorchDispatchMode):
    uniform: bool = False
    allocator: CachingAllocatorModel = field(default_factory=CachingAllocatorModel)
    phase: str = "setup"
    peaks: dict[str, PhasePeak] = field(default_factory=dict)
    scalar_queries: int = 0
    values: KnownValues = field(default_factory=KnownValues)

    def __post_init__(self) -> None:
        super().__init__()
        self._live: dict[int, int] = {}  # storage address -> allocator handle

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.peaks.setdefault(phase, PhasePeak(phase, self.allocator.allocated, self.allocator.reserved))

    @property
    def allocated(self) -> int:
        return self.allocator.allocated

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        nbytes = storage.nbytes()
        key = storage._cdata
        if nbytes == 0 or key in self._live:
            return
        handle = self.allocator.malloc(nbytes)
        self._live[key] = handle
        weakref.finalize(storage, self._release, key, handle)
        peak = self.peaks.get(self.phase)
        if peak is None:
            self.peaks[self.phase] = PhasePeak(self.phase, self.allocator.allocated, self.allocator.reserved)
        else:
            peak.allocated = max(peak.allocated, self.allocator.allocated)
            peak.reserved = max(peak.reserved, self.allocator.reserved)

    def _release(self, key: int, handle: int) -> None:
        if self._live.get(key) == handle:
            del self._live[key]
            self.allocator.free(handle)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default:
            known = self.values.scalar(args[0])
            if known is not None:
                return known
            self.scalar_queries += 1
            return self.uniform if args[0].dtype == torch.bool else 1
        out = self._call(func, args, kwargs) if self.values else func(*args, **kwargs)
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._track(leaf)
        return out

    def _call(self, func, args, kwargs):
        """The op, with known values carried along (values.py)."""
        args = self.values.rewrite_index(func, args, kwargs)
        real = self.values.run_known(func, args, kwargs)
        try:
            out = func(*args, **kwargs)
        except DynamicOutputShapeException:
            if real is None:
                raise
            like = next(t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor))
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
