"""Where a pass cuts its prompts into batches: by length, so that a long prompt does not pad a batch of short ones
(mixbatch.py and shared.py cut with it, forecast/evaltime.py prices the same cut).

Why: a batch prefills every row left-padded to its longest prompt, so on data whose lengths have a long tail
(a lab's own data), sixteen rows cut longest first padded 32 of the whole-sweep benchmark's prompts (median 56
tokens, longest 402) to 2.8× their tokens; cut by length, with adapters merged, the same pass took 1.83× less
(benchmarks/eval_pass_ab.py, docs/benchmarks.md). Each generate() also pays its decode steps' fixed part (on a CPU,
reading every weight once a step), so cutting every row apart is no better. On a CPU the two are now paid apart: a
decode batch holds JOINT_BATCHES batch sizes of one adapter's rows (`decode_rows`), prefilled in groups cut by length
(`prefill_groups`: rows longest first, split where `rows × longest + step` summed over the groups is least, an exact
dynamic programme, at most a batch size a group, `step` one forward's fixed part in prompt tokens), and decoded as one
(groupfill.py). Elsewhere (a GPU: unmeasured) a batch is a batch size of rows, longest first, prefilled together."""

from __future__ import annotations

from collections.abc import Sequence

from tunelab.host.device import on_cpu

# What one decode step's fixed part costs on a CPU, in prompt tokens prefilled: a step reads every weight once
# (memory-bound), a prompt token does a multiply-add per weight (compute-bound), so the ratio is the CPU's matmul
# speed over its memory bandwidth times the bytes of a weight over two (dtype), whatever the model's size. Measured on
# this project's 2-core machine with SmolLM2-135M in float32, the prefill keeping the last position's logits as
# generate() does (benchmarks/eval_pass_ab.py --step-ratio, 2026-11-28): with the linear layers by oneDNN, which
# evaluation picks here (models/cpu_linear.py), a step 26.6 ms and a prompt token 0.79 ms, 33 tokens; by MKL 39.7 ms
# and 1.43 ms, 28. (21 before, measured with every position's logits in the prefill.) A prefill group pays the same
# fixed part (one forward, every weight read once): it is what one more group costs in the length cut. On a GPU
# (unmeasured) batches are cut by rows only.
CPU_DECODE_STEP_TOKENS = 33.0


def decode_step_tokens(device: str | None) -> float | None:
    """A decode step's fixed part in prompt tokens on this device; None where batches are cut by rows only (a GPU,
    or None: a server that batches its own way)."""
    return CPU_DECODE_STEP_TOKENS if device is not None and on_cpu(device) else None


# On a CPU, a decode batch's rows in batch sizes. A row more costs a decode step 0.79 ms against its fixed 26.6 ms
# (SmolLM2, above): at two batch sizes of the default 16 a step is ~2× its fixed part, and a target's 32 test rows of
# the whole-sweep benchmark decode in one batch (eval_pass_ab.py: 3 batches for 96 rows instead of 12, the answers
# equal). Its KV cache grows with it (rows × the longest prompt), which bounds it.
JOINT_BATCHES = 2


def decode_rows(batch_size: int, device: str | None) -> int:
    """The rows of one adapter that one decode batch holds on this device."""
    return max(1, batch_size) * (JOINT_BATCHES if decode_step_tokens(device) is not None else 1)


def prefill_groups(lengths: Sequence[int], batch_size: int, device: str | None) -> list[list[int]]:
    """A decode batch's prefill groups (indices into `lengths`), longest first: cut by length where a forward's fixed
    part is known (a CPU), else every row in one."""
    return cut(lengths, max(1, batch_size), decode_step_tokens(device))


def decode_batches(lengths: Sequence[int], batch_size: int, device: str | None) -> list[list[list[int]]]:
    """One adapter's rows, all known, as a pass runs them: decode batches of `decode_rows`, longest first, each as
    its prefill groups (indices into `lengths`)."""
    order = longest_first(lengths)
    size = decode_rows(batch_size, device)
    out = []
    for at in range(0, len(order), size):
        chunk = order[at:at + size]
        out.append([[chunk[i] for i in group] for group in prefill_groups([lengths[i] for i in chunk], batch_size,
                                                                             device)])
    return out


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
