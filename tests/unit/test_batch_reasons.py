"""The planner's micro-batch reason names the rule that decided it: memory (the largest power of two that
fits), the effective-batch target, or the epoch's size; when memory did not decide, it says what the largest
batch that fits would have given. Checked against figures computed here, by walking, not by the planner."""

from __future__ import annotations

import pytest

from tunelab.estimate.batch import SAFETY_FRACTION, largest_batch, plan_batch
from tunelab.estimate.memory import MemoryInputs

GPU_GIB, SEQ_LEN, TARGET = 1.3, 512, 16  # a small budget beside the 0.75 GiB CUDA context: the tiny model fits a handful of packed rows


def _power_of_two_at_most(n: int) -> int:
    p = 1
    while p * 2 <= n:
        p *= 2
    return p


def _steps_per_epoch(rows: int, micro_batch: int, accumulation: int) -> int:
    """Optimizer steps of an epoch, walked: every micro-batch (the last may be short), every window of
    `accumulation` micro-batches (the last may be short) makes a step."""
    micro_batches = len(range(0, rows, micro_batch))
    return len(range(0, micro_batches, accumulation))


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


@pytest.fixture(scope="module")
def fitting(tiny_model):
    """The largest packed micro-batch that fits the budget (the simulator's figure), and its power of two."""
    max_b = largest_batch(tiny_model, MemoryInputs(), GPU_GIB * SAFETY_FRACTION, SEQ_LEN, True, None)
    assert max_b >= 2, "the budget must leave memory a choice"
    return max_b, _power_of_two_at_most(max_b)


def seconds_per_epoch(micro_batch: int, accumulation: int) -> float:
    """A time model given to the planner: an hour per epoch at micro-batch 1, faster with larger ones."""
    return 3600.0 / micro_batch


def test_target_decides_and_says_what_the_largest_fitting_batch_would_give(tiny_model, fitting):
    max_b, memory_b = fitting
    density, rows = 20.0, 100  # a packed row holds 20 examples: more than the target of 16 already
    plan = plan_batch(tiny_model, MemoryInputs(), GPU_GIB, SEQ_LEN, TARGET, packed=True, density=density,
                      sequences=rows, epoch_seconds=seconds_per_epoch)
    assert (plan.recommended_batch_size, plan.recommended_gradient_accumulation_steps) == (1, 1)
    assert (plan.decided_by, plan.max_batch_size, plan.memory_batch_size) == ("target", max_b, memory_b)
    reason = plan.reasons[0]
    assert reason.startswith(f"micro-batch 1: the effective-batch target ({TARGET} examples per optimizer step) "
                             "decides")
    assert "memory decides" not in reason
    chosen, memory = reason.split("memory alone would allow")
    assert f"{_steps_per_epoch(rows, 1, 1)} optimizer steps per epoch" in chosen
    assert _minutes(seconds_per_epoch(1, 1)) in chosen
    assert memory.startswith(f" {memory_b} (") and f"max that fits: {max_b})" in memory
    assert f"{_steps_per_epoch(rows, memory_b, 1)} optimizer step" in memory
    assert f"≈ {memory_b * density:,.0f} examples per optimizer step" in memory
    assert _minutes(seconds_per_epoch(memory_b, 1)) in memory


def test_memory_decides_when_the_fitting_batch_stays_under_the_target(tiny_model, fitting):
    max_b, memory_b = fitting
    density = 2.0
    assert memory_b * density <= TARGET  # so the target does not cap it
    plan = plan_batch(tiny_model, MemoryInputs(), GPU_GIB, SEQ_LEN, TARGET, packed=True, density=density,
                      sequences=1000)
    assert (plan.decided_by, plan.recommended_batch_size) == ("memory", memory_b)
    assert plan.recommended_gradient_accumulation_steps == round(TARGET / (memory_b * density))
    assert plan.reasons[0] == (f"micro-batch {memory_b}: memory decides: largest power of two with simulated peak "
                               f"(reserved + CUDA context) under {SAFETY_FRACTION:.0%} of {GPU_GIB:.1f} GiB "
                               f"(max that fits: {max_b})")


def test_the_epochs_size_decides_for_a_short_epoch(tiny_model, fitting):
    max_b, memory_b = fitting
    rows = 3 * memory_b  # fewer than four micro-batches of the fitting size
    plan = plan_batch(tiny_model, MemoryInputs(), GPU_GIB, SEQ_LEN, TARGET, packed=True, density=1.0,
                      sequences=rows)
    expected = memory_b
    while expected > 1 and expected * 4 > rows:
        expected //= 2
    assert (plan.decided_by, plan.recommended_batch_size) == ("epoch", expected)
    reason = plan.reasons[0]
    assert reason.startswith(f"micro-batch {expected}: the epoch's size decides: its {rows} packed sequences")
    accumulation = round(TARGET / memory_b)
    assert f"would give ≈ {memory_b * accumulation} examples per optimizer step, " \
           f"{_steps_per_epoch(rows, memory_b, accumulation)} optimizer step" in reason
