"""What a simulated step reports for one device (run.py fills it, sharding.py derives FSDP's from it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tunelab.spec.resources import Strategy

GIB = 2**30
# The CUDA context (driver, kernels loaded lazily, cuBLAS handle) sits outside PyTorch's allocator: the GPU kit's
# H100 figure after training steps (shared/reference/gpu-h100-2026-11-26), reported apart from the simulation; the
# kit's rows record it (cuda_context_gib) for each GPU they run on.
CUDA_CONTEXT_GIB = 0.75


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
    strategy: Strategy | None = None
    # FSDP: the parameter bytes one device holds, frozen and trainable, exactly as FSDP2 allocates its shards
    sharded_frozen: int | None = None
    sharded_trainable: int | None = None
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
