"""Micro-batch, packing and gradient accumulation from the memory model and the measured dataset."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tunelab.estimate.memory import MemoryInputs
from tunelab.estimate.peak import LIMIT_BATCH, largest_micro_batch, predict_peak, step_shape

SAFETY_FRACTION = 0.85  # keep predicted peak under this share of GPU memory
SHORT_EXAMPLE_FRACTION = 0.25  # packing pays off when the mean example is under this share of max_seq_len


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
                  longest: int | None, limit: int = LIMIT_BATCH) -> int:
    """Largest micro-batch whose simulated requirement fits the budget (0 when not even 1 fits)."""
    return largest_micro_batch(model, inputs, budget_gib, max_seq_len, packed, longest, limit)


def plan_batch(model: str | Path, inputs: MemoryInputs, gpu_memory_gib: float, max_seq_len: int,
               target_effective_examples: int, packed: bool, longest: int | None = None, density: float | None = None,
               sequences: int | None = None, safety: float = SAFETY_FRACTION) -> BatchPlan:
    reasons: list[str] = []
    budget = gpu_memory_gib * safety
    max_b = largest_batch(model, inputs, budget, max_seq_len, packed, longest)
    rec = 1 << (max_b.bit_length() - 1) if max_b else 0  # a power of two at most max_b
    per_row = (density or 1.0) if packed else 1.0
    if rec and rec * per_row > target_effective_examples:
        # a micro-batch above the effective batch would change the experiment: cap it at the target
        rec = max(1, 1 << (int(target_effective_examples / per_row).bit_length() - 1)) if target_effective_examples >= per_row else 1
    if rec and sequences:
        # no point in a micro-batch larger than the epoch; keep at least a few steps per epoch
        while rec > 1 and rec * 4 > sequences:
            rec //= 2
    accum = max(1, round(target_effective_examples / (rec * per_row))) if rec else 1
    if rec:
        reasons.append(f"micro-batch {rec}: largest power of two with simulated peak (reserved + CUDA context) "
                       f"under {safety:.0%} of {gpu_memory_gib:g} GiB (max that fits: {max_b}"
                       f"{' or more: the search stops there' if max_b >= LIMIT_BATCH else ''})")
        reasons.append(f"gradient accumulation {accum}: effective batch ≈ {rec * per_row * accum:.0f} examples "
                       f"(target {target_effective_examples})")
    else:
        reasons.append("not even a micro-batch of 1 fits: enable activation checkpointing, shorten max_seq_len, "
                       "or use a larger GPU")
    shape = step_shape(max(rec, 1), max_seq_len, packed, longest)
    figure = predict_peak(model, replace(inputs, gradient_accumulation_steps=accum), shape)
    return BatchPlan(packed, max_b, rec, accum, shape.tokens, round(figure.required_gib, 3), round(budget, 3),
                     round(rec * per_row * accum, 2), reasons, figure.source)




def optimizer_steps(rows: int, batch_size: int, accumulation: int, epochs: int, max_steps: int | None = None,
                    processes: int = 1) -> int:
    """Optimizer steps of a run, as the HF Trainer counts them: a last partial micro-batch and a last
    partial accumulation window each still make a step (ceil, then ceil). With N processes each takes
    every N-th micro-batch (accelerate evens the last one out). The one formula plan, validate and the
    retry policy share."""
    per_epoch = max(1, math.ceil(math.ceil(rows / (batch_size * processes)) / accumulation))
    total = per_epoch * epochs
    return min(total, max_steps) if max_steps else total
