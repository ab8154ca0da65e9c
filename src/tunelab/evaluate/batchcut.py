"""Where a pass cuts its prompts into generate() batches: by length, so that a long prompt does not pad a batch of
short ones (mixbatch.py cuts with it, forecast/evaltime.py prices the same cut).

Why: a batch prefills every row left-padded to its longest prompt, so on data whose lengths have a long tail
(a lab's own data), sixteen rows cut longest first padded 32 of the whole-sweep benchmark's prompts (median 56
tokens, longest 402) to 2.8× their tokens; cut by length, with adapters merged, the same pass took 1.83× less
(benchmarks/eval_pass_ab.py, docs/benchmarks.md). Each batch also pays its decode steps' fixed part (on a CPU, reading every weight once a
step), so cutting every row apart is no better. The cut minimizes the two together: rows longest first, split
where `rows × longest + batch_cost` summed over the batches is least (an exact dynamic programme, at most
`max_rows` a batch). `batch_cost` is a batch's decode steps in prefill tokens: max_new_tokens × DECODE_STEP_TOKENS."""

from __future__ import annotations

from collections.abc import Sequence

from tunelab.host.device import on_cpu

# What one decode step's fixed part costs on a CPU, in prompt tokens prefilled: a step reads every weight once
# (memory-bound), a prompt token does a multiply-add per weight (compute-bound), so the ratio is the CPU's matmul
# speed over its memory bandwidth times the bytes of a weight over two (dtype), whatever the model's size. Measured on
# this project's 2-core machine with SmolLM2-135M in float32, the prefill keeping the last position's logits as
# generate() does (benchmarks/eval_pass_ab.py --step-ratio, 2026-11-28): with the linear layers by oneDNN, which
# evaluation picks here (models/cpu_linear.py), a step 26.6 ms and a prompt token 0.79 ms, 33 tokens; by MKL 39.7 ms
# and 1.43 ms, 28. (21 before, measured with every position's logits in the prefill.) The cut's total is flat near
# its optimum: the sweep's evaluation took the same time cut at 21 (20 batches) and at 33 (15), within ±1 s. On a GPU
# (unmeasured) batches are cut by rows only.
CPU_DECODE_STEP_TOKENS = 33.0


def decode_step_tokens(device: str) -> float | None:
    """A decode step's fixed part in prompt tokens on this device; None where batches are cut by rows only."""
    return CPU_DECODE_STEP_TOKENS if on_cpu(device) else None


def batch_cost(max_new_tokens: int, device: str) -> float | None:
    """What one more batch costs in prompt tokens (its decode steps' fixed part), or None: cut by rows only."""
    step = decode_step_tokens(device)
    return None if step is None else max(1, max_new_tokens) * step


def longest_first(lengths: Sequence[int]) -> list[int]:
    """Indices of `lengths`, longest first; equal lengths in their given order (deterministic)."""
    return sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))


def cut(lengths: Sequence[int], max_rows: int, cost: float | None) -> list[list[int]]:
    """The batches (indices into `lengths`), longest first, whose padded tokens plus `cost` per batch are least;
    `cost` None: batches of max_rows in that order (the padding ignored)."""
    order = longest_first(lengths)
    if max_rows < 1:
        raise ValueError(f"a batch holds at least one row, not {max_rows}")
    if cost is None:
        return [order[i:i + max_rows] for i in range(0, len(order), max_rows)]
    sizes = first_sizes([lengths[i] for i in order], max_rows, cost)
    out, at = [], 0
    while at < len(order):
        out.append(order[at:at + sizes[at]])
        at += sizes[at]
    return out


def first_sizes(desc: Sequence[int], max_rows: int, cost: float) -> list[int]:
    """For each start i of the lengths sorted longest first, the rows of the best first batch from i (the rest cut
    best likewise): best[i] = min over j of desc[i] × (j - i) + cost + best[j]; the larger batch on a tie."""
    n = len(desc)
    best = [0.0] * (n + 1)
    size = [0] * n
    for i in range(n - 1, -1, -1):
        best[i] = float("inf")
        for j in range(i + 1, min(n, i + max_rows) + 1):
            total = desc[i] * (j - i) + cost + best[j]
            if total <= best[i]:
                best[i], size[i] = total, j - i
    return size
