"""A measured peak from the history in place of the simulated one: only for the same configuration (GPU model,
architecture, one process, every `MemoryConfig` field equal; a row missing a field cannot be shown the same), and only
like with like, by the row's counter (`memory_kind`):
- `cuda_max_allocated` replaces the simulated allocated peak: requirement = measured allocated + the simulation's
  allocator slack (reserved − allocated) + the CUDA context;
- `cuda_max_reserved` replaces the simulated reserved peak: requirement = measured reserved + CUDA context;
- any other counter (torch's active peak, NVML's used, host RSS) has no simulated counterpart: not used. Without a
  simulation there is no allocator slack to carry over: the row is not used."""

from __future__ import annotations

from dataclasses import dataclass, fields

from tunelab.catalog import GPU, GPUS, Architecture
from tunelab.estimate.memory import MemoryInputs
from tunelab.estimate.peak import MemoryFigure
from tunelab.ledger.history import HistoryRun
from tunelab.rundir.memory import MemoryKind
from tunelab.spec import TrainingConfig

ALLOCATED = MemoryKind.CUDA_MAX_ALLOCATED
RESERVED = MemoryKind.CUDA_MAX_RESERVED
COMPARABLE_KINDS = (ALLOCATED, RESERVED)


@dataclass(frozen=True)
class MemoryConfig:
    """Every field of one device's training step that its peak memory depends on, as history rows record them."""

    lora_targets: frozenset[str]
    lora_rank: int
    gradient_checkpointing: bool
    quantize: str  # 4bit | none
    dtype: str  # resolved: bfloat16, float32, ...
    attention: str  # the kernel: varlen, sdpa, ...
    batch_size: int  # the micro-batch
    tokens_per_microbatch: int  # the largest micro-batch's tokens, padding included
    packed: bool
    modules_to_save: frozenset[str]
    lora_dropout: float

    @classmethod
    def planned(cls, t: TrainingConfig, inputs: MemoryInputs, tokens_per_microbatch: int) -> MemoryConfig:
        """What the plan will run: the dtype it resolves on the GPU, the attention run.yaml names (or priced)."""
        return cls(_names(t.lora_targets_text), t.lora_rank, t.gradient_checkpointing, t.quantize or "none",
                   inputs.dtype, t.attention if t.attention != "auto" else inputs.attention, t.batch_size,
                   tokens_per_microbatch, t.packing, frozenset(t.modules_to_save), t.lora_dropout)

    @classmethod
    def of_row(cls, row: HistoryRun) -> MemoryConfig | None:
        """The row's configuration, or None when it did not record all of it."""
        values = (row.lora_targets, row.lora_rank, row.gradient_checkpointing, row.quantize, row.dtype,
                  row.attention, row.batch_size, row.max_tokens_per_microbatch, row.packed, row.modules_to_save,
                  row.lora_dropout)
        if any(v is None for v in values):
            return None
        return cls(_names(row.lora_targets or ""), int(row.lora_rank or 0), bool(row.gradient_checkpointing),
                   str(row.quantize), str(row.dtype), str(row.attention), int(row.batch_size or 0),
                   int(row.max_tokens_per_microbatch or 0), bool(row.packed), _names(row.modules_to_save or ""),
                   float(row.lora_dropout or 0.0))

    def differences(self, other: MemoryConfig) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]


def _names(text: str) -> frozenset[str]:
    """Comma-separated module names as a set: the order targets are listed in does not change the memory."""
    return frozenset(n.strip() for n in text.split(",") if n.strip())


def gpu_family(name: str) -> str:
    """The catalog's stem a device name holds, the longest one ('NVIDIA L40S' is an L40S, not an L4), or the
    name itself for a GPU the catalog lacks. The 40 and 80 GB A100s are one family: a step allocates the same."""
    norm = name.upper().replace(" ", "")
    stems = [stem for g in GPUS.values() if (stem := g.name.split("-")[0].upper()) in norm]
    return max(stems, key=len) if stems else norm


def same_gpu(row: HistoryRun, gpu: GPU) -> bool:
    """The row ran on a GPU of this model (CUDA device names such as 'NVIDIA H100 80GB HBM3')."""
    return bool(row.device) and row.device != "cpu" and gpu_family(row.device or "") == gpu_family(gpu.name)


def measured_peak(history: list[HistoryRun], gpu: GPU, arch: Architecture, planned: MemoryConfig) -> HistoryRun | None:
    """The newest comparable measured peak of exactly this configuration on this GPU, or None."""
    for row in reversed(history):  # history.load orders rows by when they were recorded
        if (row.memory_kind in COMPARABLE_KINDS and row.peak_memory_gib and row.processes == 1
                and same_gpu(row, gpu) and row.of_architecture(arch)
                and MemoryConfig.of_row(row) == planned):
            return row
    return None


def measured_requirement(row: HistoryRun, figure: MemoryFigure) -> tuple[float, str] | None:
    """(GiB that must fit, source) from a measured row and the same step's simulation; None when not comparable."""
    if row.peak_memory_gib is None or figure.allocated_gib is None or figure.reserved_gib is None:
        return None
    where = row.run or row.key
    if row.memory_kind == ALLOCATED:
        slack = figure.reserved_gib - figure.allocated_gib
        need = row.peak_memory_gib + slack + figure.context_gib
        return need, (f"measured: {where} (max_memory_allocated {row.peak_memory_gib:.2f} GiB, in place of the "
                      f"simulated {figure.allocated_gib:.2f}) + simulated allocator slack {slack:.2f} "
                      f"(reserved − allocated) + CUDA context {figure.context_gib:.2f}; simulated alone "
                      f"{figure.required_gib:.2f}")
    if row.memory_kind == RESERVED:
        need = row.peak_memory_gib + figure.context_gib
        return need, (f"measured: {where} (max_memory_reserved {row.peak_memory_gib:.2f} GiB, in place of the "
                      f"simulated {figure.reserved_gib:.2f}) + CUDA context {figure.context_gib:.2f}; simulated "
                      f"alone {figure.required_gib:.2f}")
    return None
