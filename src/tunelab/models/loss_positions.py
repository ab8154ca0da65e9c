"""The sequence positions whose logits a training step needs: those whose next token carries the loss.

A chat row trained on its answer alone has labels on a few tokens; the LM head (hidden × vocabulary multiply-adds
per position, forward and backward, and a cross-entropy over the vocabulary) computed at every other position is
thrown away. On a CPU that was 20–38 % of a SmolLM2 step (docs/benchmarks.md). transformers' causal LMs take the
positions to keep (`logits_to_keep`, a 1-D index over the sequence) and the labels already shifted (`shift_labels`):
the same loss, from the kept logits only. One rule, called by the trainer (train/loop_hooks.py) and by the plan's
timing of a step (forecast/cpuspeed.py), so what the plan times is what the job computes."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

IGNORE_INDEX = -100  # transformers' and TRL's label for a position without loss


def kept_logits_inputs(labels: Any) -> dict[str, Any]:
    """The model inputs that keep only the logits the loss reads: {} when every position is needed or none is (the
    model's own full path, as before). A batch of rows keeps the union of its rows' positions (one index for all)."""
    import torch.nn.functional as F

    if labels is None or labels.dim() != 2 or labels.shape[1] < 2:
        return {}
    shifted = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)  # position t predicts token t + 1
    keep = (shifted != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)
    if keep.numel() == 0 or keep.numel() >= labels.shape[1] - 1:  # none, or all a row can predict
        return {}
    return {"logits_to_keep": keep, "shift_labels": shifted[:, keep].contiguous()}


def keeps_logits(model: Any) -> bool:
    """Whether the model's forward takes `logits_to_keep` (transformers' causal LMs do; under PEFT, its base's)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(type(base).forward).parameters
    except (TypeError, ValueError):
        return False


def kept_share(rows: Sequence[tuple[int, int]], batch_size: int, packed: bool, max_seq_len: int) -> float:
    """The share of a micro-batch's positions whose logits are kept, from each row's (tokens, first answer position)
    as trained: packed, the rows' answer tokens over their tokens; padded batches of `batch_size` rows in order, the
    union of their rows' answer positions over the longest row's length (what kept_logits_inputs keeps)."""
    cut = [(min(n, max_seq_len), min(a, max_seq_len)) for n, a in rows if n > 0]
    if not cut:
        return 1.0
    if packed:
        return max(0.0, min(1.0, sum(n - a for n, a in cut) / sum(n for n, _ in cut)))
    kept = positions = 0
    for start in range(0, len(cut), max(1, batch_size)):
        group = cut[start:start + max(1, batch_size)]
        kept += _union_length(sorted((max(0, a - 1), n - 1) for n, a in group))
        positions += max(n for n, _ in group)
    return kept / positions if positions else 1.0


def _union_length(spans: list[tuple[int, int]]) -> int:
    """How many integers the half-open spans [start, end), sorted by start, cover together."""
    total, reach = 0, 0
    for start, end in spans:
        start = max(start, reach)
        if end > start:
            total += end - start
            reach = end
    return total


def calibration_labels(ids: Any, kept: float) -> Any:
    """The calibration micro-batch's labels: every token, or (kept < 1) the same evenly spaced positions' next tokens
    in every row, as many as `kept` of the positions: a job's loss over its rows' answers keeps that many logits."""
    seq = ids.shape[1]
    count = max(1, round(kept * seq))
    if count >= seq - 1:
        return ids
    labels = ids.new_full(ids.shape, IGNORE_INDEX)
    targets = [1 + (i * (seq - 1)) // count for i in range(count)]  # positions 1..seq-1: each predicted by the one before
    labels[:, targets] = ids[:, targets]
    return labels
