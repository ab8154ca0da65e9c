"""Micro-batch, packing and gradient accumulation from the memory model and the measured dataset."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tunelab.estimate.memory import MemoryInputs
from tunelab.estimate.peak import LIMIT_BATCH, largest_micro_batch, predict_peak, step_shape
from tunelab.fsutil import human_seconds
from tunelab.spec.resources import Strategy

SAFETY_FRACTION = 0.85  # keep predicted peak under this share of GPU memory
SHORT_EXAMPLE_FRACTION = 0.25  # packing pays off when the mean example is under this share of max_seq_len
MIN_MICRO_BATCHES_PER_EPOCH = 4  # the epoch's size caps the micro-batch so an epoch keeps this many


@dataclass
class BatchPlan:
    packed: bool
    max_batch_size: int
    recommended_batch_size: int
    recommended_gradient_accumulation_steps: int
    tokens_per_microbatch: int
    predicted_peak_gib: float
    budget_gib: float
    effective_batch_examples: float
    reasons: list[str] = field(default_factory=list)
    memory_source: str = ""
    decided_by: str = "memory"  # what set the micro-batch: memory, target (effective batch), epoch (its size), none
    memory_batch_size: int = 0  # what memory alone allows: the largest power of two that fits (throughput)

    def to_dict(self) -> dict:
        return asdict(self)


def tokens_per_microbatch(batch: int, max_seq_len: int, packed: bool, longest: int | None) -> int:
    """Packed: every row is max_seq_len long. Unpacked: the worst batch pads to the longest example."""
    if packed or longest is None:
        return batch * max_seq_len
    return batch * min(longest, max_seq_len)


def should_pack(mean_len: float | None, max_seq_len: int) -> bool:
    return mean_len is not None and mean_len <= SHORT_EXAMPLE_FRACTION * max_seq_len


def largest_batch(model: str | Path, inputs: MemoryInputs, budget_gib: float, max_seq_len: int, packed: bool,
                  longest: int | None, limit: int = LIMIT_BATCH, processes: int = 1,
                  strategy: Strategy | None = None) -> int:
    """Largest micro-batch whose simulated requirement per device fits (0: not even 1), on `processes` devices with
    `strategy`, so an FSDP search shards as its peak does."""
    return largest_micro_batch(model, inputs, budget_gib, max_seq_len, packed, longest, limit, processes, strategy)


def plan_batch(model: str | Path, inputs: MemoryInputs, gpu_memory_gib: float, max_seq_len: int,
               target_effective_examples: int, packed: bool, longest: int | None = None, density: float | None = None,
               sequences: int | None = None, safety: float = SAFETY_FRACTION,
               epoch_seconds: Callable[[int, int], float | None] | None = None, processes: int = 1,
               strategy: Strategy | None = None) -> BatchPlan:
    """The micro-batch memory allows, capped by the effective-batch target and the epoch's size; its reasons name the
    rule that decided. sequences: rows of an epoch; epoch_seconds(micro_batch, accumulation): the time model, if any;
    processes/strategy: memory per device of an N-device run."""
    budget = gpu_memory_gib * safety
    max_b = largest_batch(model, inputs, budget, max_seq_len, packed, longest, processes=processes,
                          strategy=strategy)
    per_row = (density or 1.0) if packed else 1.0
    choice = _choose(max_b, per_row, target_effective_examples, sequences)
    accum = _accumulation(choice.batch, per_row, target_effective_examples)
    if choice.batch:
        why = _BatchWhy(gpu_memory_gib, safety, max_b, per_row, target_effective_examples, packed, sequences,
                        epoch_seconds)
        reasons = [why.micro_batch(choice, accum),
                   f"gradient accumulation {accum}: effective batch ≈ {choice.batch * per_row * accum:.0f} "
                   f"examples (target {target_effective_examples})"]
    else:
        reasons = [_none_fits(inputs, processes, strategy)]
    shape = step_shape(max(choice.batch, 1), max_seq_len, packed, longest)
    figure = predict_peak(model, replace(inputs, gradient_accumulation_steps=accum), shape, processes, strategy)
    return BatchPlan(packed, max_b, choice.batch, accum, shape.tokens, round(figure.required_gib, 3),
                     round(budget, 3), round(choice.batch * per_row * accum, 2), reasons, figure.source,
                     choice.rule, choice.memory_batch)


def _none_fits(inputs: MemoryInputs, processes: int, strategy: Strategy | None) -> str:
    """What is left to try when not even a micro-batch of 1 fits (only what is not already on)."""
    fixes = ([] if inputs.activation_checkpointing else ["enable activation checkpointing"])
    fixes += ["shorten max_seq_len"]
    if strategy != Strategy.FSDP or processes <= 1:
        fixes += ["shard the model over several GPUs (FSDP)"]
    else:
        fixes += [f"shard it over more than {processes} GPUs"]
    return f"not even a micro-batch of 1 fits: {', '.join(fixes)}, or use a larger GPU"


@dataclass(frozen=True)
class _Choice:
    batch: int  # the micro-batch chosen (0: not even 1 fits)
    rule: str  # what set it: memory, target or epoch (see BatchPlan.decided_by)
    memory_batch: int  # what memory alone allows: the largest power of two that fits


def _choose(max_b: int, per_row: float, target: int, sequences: int | None) -> _Choice:
    """Memory first (the largest power of two that fits), then the effective-batch target (a larger micro-batch would
    change the experiment), then the epoch's size (keep MIN_MICRO_BATCHES_PER_EPOCH)."""
    memory_b = 1 << (max_b.bit_length() - 1) if max_b else 0
    batch, rule = memory_b, "memory" if memory_b else "none"
    if batch and batch * per_row > target:
        capped = 1 << (int(target / per_row).bit_length() - 1) if target >= per_row else 1
        if capped < batch:
            batch, rule = capped, "target"
    while sequences and batch > 1 and batch * MIN_MICRO_BATCHES_PER_EPOCH > sequences:
        batch, rule = batch // 2, "epoch"
    return _Choice(batch, rule, memory_b)


def _accumulation(batch: int, per_row: float, target: int) -> int:
    """Micro-batches per optimizer step that bring the effective batch nearest the target (at least 1)."""
    return max(1, round(target / (batch * per_row))) if batch else 1


@dataclass(frozen=True)
class _BatchWhy:
    """The rule that decided the micro-batch and, when memory did not, what the largest fitting batch would give."""

    gpu_memory_gib: float
    safety: float
    max_b: int
    per_row: float
    target: int
    packed: bool
    sequences: int | None
    epoch_seconds: Callable[[int, int], float | None] | None

    def memory_rule(self, detail: str = "") -> str:
        more = " or more: the search stops there" if self.max_b >= LIMIT_BATCH else ""
        return (f"largest power of two with simulated peak{detail} under {self.safety:.0%} of "
                f"{self.gpu_memory_gib:.1f} GiB (max that fits: {self.max_b}{more})")

    def gives(self, batch: int, accum: int) -> str:
        """Examples per optimizer step, optimizer steps per epoch and time per epoch (those known)."""
        parts = [f"≈ {batch * self.per_row * accum:,.0f} examples per optimizer step"]
        if self.sequences:
            steps = optimizer_steps(self.sequences, batch, accum, 1)
            parts.append(f"{steps} optimizer step{'s' if steps != 1 else ''} per epoch")
        seconds = self.epoch_seconds(batch, accum) if self.epoch_seconds else None
        if seconds is not None:
            parts.append(f"≈ {human_seconds(seconds)} per epoch")
        return ", ".join(parts)

    def micro_batch(self, choice: _Choice, accum: int) -> str:
        if choice.rule == "memory":
            return (f"micro-batch {choice.batch}: memory decides: "
                    f"{self.memory_rule(' (reserved + CUDA context)')}")
        if choice.rule == "target":
            row = f"a packed row holds ≈ {self.per_row:.1f} examples, so " if self.packed else ""
            why = (f"the effective-batch target ({self.target} examples per optimizer step) decides: {row}a "
                   f"larger micro-batch would overshoot it")
        else:
            unit = "packed sequences" if self.packed else "examples"
            why = (f"the epoch's size decides: its {self.sequences} {unit} keep at least "
                   f"{MIN_MICRO_BATCHES_PER_EPOCH} micro-batches per epoch")
        alt = choice.memory_batch
        return (f"micro-batch {choice.batch}: {why} (× accumulation {accum}: {self.gives(choice.batch, accum)}); "
                f"memory alone would allow {alt} ({self.memory_rule()}), which would give "
                f"{self.gives(alt, _accumulation(alt, self.per_row, self.target))}")


def optimizer_steps(rows: int, batch_size: int, accumulation: int, epochs: int, max_steps: int | None = None,
                    processes: int = 1) -> int:
    """Optimizer steps as the HF Trainer counts them: partial micro-batches and accumulation windows still make a step
    (ceil, then ceil), each of N processes taking every N-th micro-batch. The one formula plan, validate and the retry
    policy share."""
    per_epoch = max(1, math.ceil(math.ceil(rows / (batch_size * processes)) / accumulation))
    total = per_epoch * epochs
    return min(total, max_steps) if max_steps else total
