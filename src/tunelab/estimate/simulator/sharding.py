"""One device's figures from the step simulated once: FSDP FULL_SHARD per device is derived from the unsharded step
(each parameter split as FSDP2 splits it, the optimizer state with it, buffers whole, plus two decoder layers' full
weights, computing and prefetched), so one simulated step serves one process and every FSDP process count. A search
over GPU counts (forecast/gpus.py) or a plan that weighs both layouts then simulates the step once (run.py caches it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from tunelab.estimate.simulator.figures import SimulatedMemory
from tunelab.spec.resources import Strategy

FSDP_GATHERED_LAYERS = 2


@dataclass(frozen=True)
class ParameterShape:
    """What FSDP2's split of one parameter depends on."""

    rows: int  # its first dimension (1 for a scalar)
    numel: int
    element_size: int
    trainable: bool


@dataclass(frozen=True)
class ShardBytes:
    """Parameter bytes of the whole model and of one device's FSDP2 shards, frozen and trainable."""

    frozen_whole: int
    trainable_whole: int
    frozen: int
    trainable: int


@dataclass
class OneDeviceStep:
    """The step as one process runs it (DDP's buckets included when it had them), before any sharding: its figures,
    each phase's (allocated, reserved) peak, the largest decoder layer's bytes and the parameters' shapes."""

    sim: SimulatedMemory
    phases: dict[str, tuple[int, int]]
    layer_bytes: int
    parameters: list[ParameterShape] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"sim": self.sim.to_dict(), "phases": self.phases, "layer_bytes": self.layer_bytes,
                "parameters": [asdict(p) for p in self.parameters]}

    @classmethod
    def from_dict(cls, d: dict[str, Any], sim: SimulatedMemory) -> OneDeviceStep:
        """Read back from to_dict's JSON, `sim` being its figures read back."""
        return cls(sim, {p: (int(a), int(r)) for p, (a, r) in d["phases"].items()}, int(d["layer_bytes"]),
                   [ParameterShape(**p) for p in d["parameters"]])

    def per_device(self, processes: int, strategy: Strategy | None) -> tuple[SimulatedMemory, dict[str, tuple[int, int]]]:
        """The figures and phase peaks of one of `processes` devices under `strategy` (a fresh copy)."""
        sim = replace(self.sim, processes=processes, strategy=strategy)
        phases = dict(self.phases)
        if strategy == Strategy.FSDP and processes > 1:
            saved = _shard(sim, processes, self.layer_bytes, shard_bytes(self.parameters, processes))
            phases = {p: (al - saved, re - saved) for p, (al, re) in phases.items()}
        return sim, phases


def parameter_shapes(model: Any) -> list[ParameterShape]:
    """Every distinct parameter's shape facts (tied parameters once, as model.parameters() yields them)."""
    return [ParameterShape(p.shape[0] if p.dim() else 1, p.numel(), p.element_size(), p.requires_grad)
            for p in model.parameters()]


def largest_layer_bytes(model: Any) -> int:
    """Bytes of the largest element of the model's largest ModuleList (its decoder layers)."""
    import torch

    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m)]
    if not lists:
        return 0
    layers = max(lists, key=len)
    return max(sum(p.numel() * p.element_size() for p in layer.parameters()) for layer in layers)


def shard_bytes(parameters: list[ParameterShape], n: int) -> ShardBytes:
    """What FSDP2 allocates on each of n devices: every parameter split on its first dimension into chunks of ceil(rows
    / n) rows, padded so all devices hold the same; tied parameters count once."""
    frozen_whole = trainable_whole = frozen = trainable = 0
    for p in parameters:
        whole = p.numel * p.element_size
        shard = -(-p.rows // n) * (p.numel // p.rows if p.rows else 0) * p.element_size
        if p.trainable:
            trainable_whole, trainable = trainable_whole + whole, trainable + shard
        else:
            frozen_whole, frozen = frozen_whole + whole, frozen + shard
    return ShardBytes(frozen_whole, trainable_whole, frozen, trainable)


def _shard(sim: SimulatedMemory, n: int, layer_bytes: int, shards: ShardBytes) -> int:
    """FSDP FULL_SHARD per device, derived from the one-device step: the bytes it saves at every moment."""
    before = sim.weights + sim.trainable + sim.optimizer
    sim.weights += shards.frozen - shards.frozen_whole  # buffers stay whole
    sim.optimizer = int(sim.optimizer * shards.trainable / shards.trainable_whole) if shards.trainable_whole else 0
    sim.trainable += shards.trainable - shards.trainable_whole
    sim.sharded_frozen, sim.sharded_trainable = shards.frozen, shards.trainable
    saved = before - (sim.weights + sim.trainable + sim.optimizer) - FSDP_GATHERED_LAYERS * layer_bytes
    sim.peak_allocated -= saved
    sim.peak_reserved -= saved
    return saved
