"""An adapter merged into the base for as long as its rows are answered, and the base's own weights put back exactly.

Why: PEFT answers an unmerged adapter with two more small matrix products (and their operator calls) beside every
targeted layer: on a CPU, SmolLM2-135M with a rank-32 adapter on every linear layer generated 1.27× slower than the
same weights merged (benchmarks/eval_pass_ab.py --merge-ratio). A pass (shared.py) holds several adapters beside one
base, so the merge is PEFT's safe merge — the update added into a copy of each weight, the base's own tensor kept
aside — and ending it puts the kept tensors back, so the base and every other adapter are bit for bit what they were.
A target evaluated alone merges too (hf.load_model), the same sum, so both ways answer alike. Not merged: off a CPU
(host/device.merges_adapters), a batch that mixes adapters, and copies that would take over half the free memory."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Merged:
    """The adapter merged now, and the base's own weight (and bias) tensors its merge set aside."""

    adapter: str
    kept: list[tuple[Any, str, Any]] = field(default_factory=list)  # (base layer, "weight" | "bias", its tensor)


def touched_layers(model: Any, adapter: str) -> list[Any]:
    """The base layers this adapter updates (those a merge copies)."""
    from peft.tuners.lora import LoraLayer

    return [m.get_base_layer() for m in model.modules() if isinstance(m, LoraLayer) and adapter in m.lora_A]


def copy_bytes(model: Any, adapter: str) -> int:
    """The memory a merge of this adapter takes: a copy of every weight it updates."""
    return sum(layer.weight.numel() * layer.weight.element_size() for layer in touched_layers(model, adapter))


def merge(model: Any, adapter: str) -> Merged:
    """Merge `adapter` (active) into copies of the weights it updates; the originals kept in the record."""
    kept = []
    for layer in touched_layers(model, adapter):
        kept += [(layer, name, getattr(layer, name).data) for name in ("weight", "bias")
                 if getattr(layer, name, None) is not None]
    model.set_adapter(adapter, inference_mode=True)
    merged = Merged(adapter, kept)
    try:
        model.base_model.merge_adapter([adapter], safe_merge=True)
    except BaseException:  # a layer refused (non-finite weights): the ones merged before it put back
        unmerge(model, merged)
        raise
    return merged


def unmerge(model: Any, merged: Merged) -> None:
    """End the merge: PEFT's own unmerge (its record of what is merged), then the kept tensors back in place."""
    with warnings.catch_warnings():  # a merge that failed on its first layer left nothing to unmerge
        warnings.filterwarnings("ignore", message="Already unmerged")
        model.base_model.unmerge_adapter()
    for layer, name, tensor in merged.kept:
        getattr(layer, name).data = tensor
