"""One adapter's rows prefilled in groups of like length, then decoded as one batch.

Why: on a CPU a decode step's cost is mostly its fixed part (every weight read once: 26.6 ms for SmolLM2-135M, against
0.79 ms a row; batchcut.py), and a prompt's prefill is compute, so rows should be decoded together but prefilled
apart: padded to one width, a long-tailed batch prefills mostly pads. The length cut (batchcut.prefill_groups) picks
the groups; each group prefills its rows but for their last token, after the shared prefix's keys (prefix.py), and
the groups' caches are joined, widened in the middle to the batch's width with masked zeros: the layout prefix.py's
`mid_padded` gives the whole batch (prefix, pads, own tokens), so generate() takes the joined cache as the batch's own
and feeds the last column. A row's keys are the same whichever group computed them (positions count only its real
tokens), so it answers as alone (tests/unit/test_eval_groupfill.py). Only for a model whose cache is plain full
attention (no sliding window, no recurrent state), as prefix.py."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from tunelab.catalog import Architecture
from tunelab.evaluate.prefix import mid_padded, prefix_cache


def decodes_together(groups: Sequence[Sequence[int]], lengths: Sequence[int], prefix: int) -> bool:
    """Whether these groups can be prefilled apart and decoded as one: more than one group, and each group's longest
    row has a token to prefill beyond the prefix before its last."""
    return len(groups) > 1 and all(max(lengths[i] for i in g) - 1 > prefix for g in groups)


def cache_bytes(arch: Architecture, rows: int, width: int, dtype_bytes: int) -> int:
    """The keys and values a decode batch of `rows` rows `width` tokens wide holds, every layer."""
    return 2 * arch.layers * arch.kv_heads * arch.head_dim * rows * width * dtype_bytes


def grouped_inputs(model: Any, prompts: Sequence[Sequence[int]], groups: Sequence[Sequence[int]], prefix: int,
                   pad_id: int, device: str) -> dict[str, Any] | None:
    """generate()'s inputs for `prompts` in the groups' order (their indices concatenated): ids and mask laid out as
    prefix.mid_padded lays out the whole batch, and the cache of all but each row's last token; None where the model's
    cache is not plain full attention."""
    import torch

    ordered = [list(prompts[i]) for g in groups for i in g]
    width = max(len(p) for p in ordered)
    start = prefix_cache(model, ordered[0][:prefix], 1, device) if prefix else None
    if prefix and start is None:
        return None
    keep = {"logits_to_keep": 1} if _keeps_logits(model) else {}  # a prefill's logits are not read: the fewest
    keys: list[list[Any]] = []
    values: list[list[Any]] = []
    at = 0
    for group in groups:
        rows = ordered[at:at + len(group)]
        at += len(group)
        cache = _group_cache(model, rows, prefix, start, pad_id, device, keep)
        if cache is None:
            return None
        for layer, (k, v) in enumerate(cache):
            if layer == len(keys):
                keys.append([])
                values.append([])
            keys[layer].append(_widened(k, prefix, width - 1))
            values[layer].append(_widened(v, prefix, width - 1))
    from transformers.cache_utils import DynamicCache

    joined = DynamicCache(ddp_cache_data=[(torch.cat(k), torch.cat(v)) for k, v in zip(keys, values)],
                          config=model.config)
    ids, mask = mid_padded(ordered, prefix, pad_id)
    return {"input_ids": torch.tensor(ids, device=device), "attention_mask": torch.tensor(mask, device=device),
            "past_key_values": joined}


def _group_cache(model: Any, rows: list[list[int]], prefix: int, start: Any, pad_id: int, device: str,
                 keep: dict[str, int]) -> list[tuple[Any, Any]] | None:
    """One group's keys and values (per layer) over its rows but their last token, mid-padded to the group's width
    after the prefix's; None where the cache is not plain full attention."""
    import torch
    from transformers.cache_utils import DynamicCache

    ids, mask = (torch.tensor(x, device=device) for x in mid_padded(rows, prefix, pad_id))
    end = ids.shape[1] - 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # only real tokens count, as generate() counts them
    cache = None
    if start is not None:
        cache = DynamicCache(ddp_cache_data=[(layer.keys.expand(len(rows), -1, -1, -1).contiguous(),
                                              layer.values.expand(len(rows), -1, -1, -1).contiguous())
                                             for layer in start.layers], config=model.config)
    out = model(input_ids=ids[:, prefix:end], attention_mask=mask[:, :end], position_ids=positions[:, prefix:end],
                past_key_values=cache, use_cache=True, **keep)
    cache = getattr(out, "past_key_values", None)
    if not isinstance(cache, DynamicCache) or any(cache.is_sliding) or cache.get_seq_length() != end:
        return None
    layers: list[Any] = list(cache.layers)  # plain full attention: each a keys and values tensor
    return [(layer.keys, layer.values) for layer in layers]


def _keeps_logits(model: Any) -> bool:
    """Whether the model's forward takes `logits_to_keep` (most of transformers' causal LMs; under PEFT, its base's)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):  # a forward with no signature to read
        return False


def _widened(t: Any, prefix: int, width: int) -> Any:
    """A [rows, heads, tokens, dim] cache tensor widened to `width` tokens by zeros after the prefix (masked pads)."""
    import torch

    pads = width - t.shape[2]
    if pads == 0:
        return t
    zeros = t.new_zeros(t.shape[0], t.shape[1], pads, t.shape[3])
    return torch.cat([t[:, :, :prefix], zeros, t[:, :, prefix:]], dim=2)
