"""One simulation: build, materialize on fake tensors, run the steps, read the tracker; cached.

Per device with several processes: DDP runs the same step on every device plus its gradient buckets
(simulated). FSDP (FULL_SHARD) is derived from the simulated step, not simulated: the frozen weights,
the trainable parameters and the optimizer state are divided by the number of devices, and two decoder
layers' full weights are added (the one computing and the one prefetched).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunelab.diskcache import cached_json
from tunelab.estimate.simulator.spec import StepConfig, StepShape

GIB = 2**30
# The CUDA context (driver, kernels loaded lazily, cuBLAS handle) sits outside PyTorch's allocator; about
# 0.5 GiB for a PyTorch training process on Ampere/Hopper with CUDA 12's lazy loading. An assumption until
# measured on a GPU (the figure is reported apart, so it can be replaced without touching the simulation).
CUDA_CONTEXT_GIB = 0.5
FSDP_GATHERED_LAYERS = 2


@dataclass
class SimulatedMemory:
    """Bytes, per device. `peak_reserved + context` is what has to fit in the GPU's memory."""

    peak_allocated: int
    peak_reserved: int
    context: int
    weights: int  # frozen parameters and buffers
    trainable: int  # trainable parameters
    optimizer: int  # AdamW state (created in the first step)
    ddp_buckets: int
    activations: int  # peak allocated minus what is live before the last step
    peak_phase: str
    tokens: int
    trainable_params: int
    processes: int = 1
    strategy: str | None = None
    seconds: float = 0.0
    scalar_queries: int = 0
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def allocated_gib(self) -> float:
        return self.peak_allocated / GIB

    @property
    def reserved_gib(self) -> float:
        return self.peak_reserved / GIB

    @property
    def required_gib(self) -> float:
        """What must fit: reserved plus the CUDA context."""
        return (self.peak_reserved + self.context) / GIB

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def library_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "transformers", "peft", "trl")}


def _code_stamp() -> str:
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(here.glob("*.py")) + [here.parent.parent / "adapter.py"]:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def simulate(model_config: dict[str, Any], c: StepConfig, shape: StepShape, processes: int = 1,
             strategy: str | None = None) -> SimulatedMemory:
    """Simulated peak memory of one device for this model, configuration and micro-batch (cached)."""
    key = {"model": model_config, "config": c.to_dict(), "shape": shape.to_dict(), "processes": processes,
           "strategy": strategy, "versions": library_versions(), "code": _code_stamp()}
    value = cached_json("memsim", key, lambda: _simulate(model_config, c, shape, processes, strategy).to_dict())
    return SimulatedMemory(**value)


def _simulate(model_config: dict[str, Any], c: StepConfig, shape: StepShape, processes: int,
              strategy: str | None) -> SimulatedMemory:
    from torch._subclasses.fake_tensor import FakeTensorMode

    from tunelab.compat import quiet_known_library_warnings
    from tunelab.estimate.simulator.build import build_on_meta, materialize
    from tunelab.estimate.simulator.step import gpu_kernels, run_steps
    from tunelab.estimate.simulator.tracker import StorageTracker

    quiet_known_library_warnings()
    t0 = time.perf_counter()
    model = build_on_meta(model_config, c)
    tracker = StorageTracker(uniform=not shape.needs_mask)
    with gpu_kernels(), FakeTensorMode(allow_non_fake_inputs=True), tracker:
        materialize(model)
        trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
        layer = _largest_layer_bytes(model)
        tracker.allocator.reset_peaks()
        marks = run_steps(model, c, shape, tracker, ddp=strategy == "ddp" and processes > 1)
    peak = tracker.peak_phase()
    weights = marks["model"] - trainable
    optimizer = marks["before_last_step"] - marks["model"] - marks["ddp_buckets"]
    sim = SimulatedMemory(
        peak_allocated=tracker.allocator.peak_allocated, peak_reserved=tracker.allocator.peak_reserved,
        context=int(CUDA_CONTEXT_GIB * GIB), weights=weights, trainable=trainable, optimizer=optimizer,
        ddp_buckets=marks["ddp_buckets"],
        activations=tracker.allocator.peak_allocated - marks["before_last_step"], peak_phase=peak.phase,
        tokens=shape.tokens,
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        processes=processes, strategy=strategy, scalar_queries=tracker.scalar_queries,
        versions=library_versions())
    if strategy == "fsdp" and processes > 1:
        _shard(sim, processes, layer)
    sim.seconds = round(time.perf_counter() - t0, 3)
    return sim


def _largest_layer_bytes(model: Any) -> int:
    """Bytes of the largest element of the model's largest ModuleList (its decoder layers)."""
    import torch

    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m)]
    if not lists:
        return 0
    layers = max(lists, key=len)
    return max(sum(p.numel() * p.element_size() for p in layer.parameters()) for layer in layers)


def _shard(sim: SimulatedMemory, n: int, layer_bytes: int) -> None:
    """FSDP FULL_SHARD per device, derived from the one-device step (see the module docstring)."""
    sharded = sim.weights + sim.trainable + sim.optimizer
    saved = int(sharded * (1 - 1 / n)) - FSDP_GATHERED_LAYERS * layer_bytes
    sim.peak_allocated -= saved
    sim.peak_reserved -= saved
    sim.weights, sim.trainable, sim.optimizer = (int(x / n) for x in (sim.weights, sim.trainable, sim.optimizer))
