"""A batch's shared prompt prefix prefilled once: its keys and values computed for one row and copied to every row.

Why: on a CPU an evaluation's time is its prompts' prefill (the whole sweep's: 17 of 26 s of generation), and a
task's prompts begin alike — the chat template's header and system prompt, an instruction, few-shot examples. Each
batch's rows share that prefix token for token, so it is run once, then every row continues after it: the rows are
laid out prefix, padding, own tokens (`mid_padded`), which generate() reads as left padding is read (the attention
mask drops the pads and positions count only real tokens), so each row sees the same tokens at the same positions as
when it is prefilled whole. Only on a CPU (measured there; a GPU's prefill is cheap and unmeasured), for a batch of
one adapter (merged or active: the prefix's keys are that adapter's) and a model whose cache is plain full attention
(no sliding window, no recurrent state)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tunelab.host.device import on_cpu

MIN_PREFIX = 8  # shorter shared prefixes are prefilled with their rows: the copy is not worth a forward of its own


def shares_prefix(device: str) -> bool:
    """Whether a batch's shared prefix is prefilled once on this device: a CPU, where it was measured."""
    return on_cpu(device)


def shared_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """Tokens every prompt begins with, leaving each at least one of its own (generate() needs a last token to
    continue from); 0 when fewer than MIN_PREFIX or one row only."""
    if len(prompts) < 2:
        return 0
    first, limit = prompts[0], min(len(p) for p in prompts) - 1
    n = 0
    while n < limit and all(p[n] == first[n] for p in prompts):
        n += 1
    return n if n >= MIN_PREFIX else 0


def mid_padded(prompts: Sequence[Sequence[int]], prefix: int, pad_id: int) -> tuple[list[list[int]], list[list[int]]]:
    """(ids, attention mask): each row's prefix, then pads, then its own tokens, all ending in the last column."""
    width = max(len(p) for p in prompts)
    ids, mask = [], []
    for p in prompts:
        pads = width - len(p)
        ids.append(list(p[:prefix]) + [pad_id] * pads + list(p[prefix:]))
        mask.append([1] * prefix + [0] * pads + [1] * (len(p) - prefix))
    return ids, mask


def prefix_cache(model: Any, prefix_ids: Sequence[int], rows: int, device: str) -> Any | None:
    """The prefix's keys and values for `rows` rows (a DynamicCache), or None where the model's cache is not plain
    full attention."""
    import torch
    from transformers.cache_utils import DynamicCache

    ids = torch.tensor([list(prefix_ids)], device=device)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
    cache = getattr(out, "past_key_values", None)
    if not isinstance(cache, DynamicCache) or any(cache.is_sliding) or cache.get_seq_length() != len(prefix_ids):
        return None
    cache.batch_repeat_interleave(rows)
    return cache
