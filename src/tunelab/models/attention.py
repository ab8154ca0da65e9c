"""The attention a run trains with: chosen once per run (written into run.yaml), the same for the job and the memory
simulator. `auto`: packed rows attend per example through tunelab's `varlen` (models/varlen.py), never a dense (ΣT)²
mask; padded batches use SDPA. `sdpa` or `eager` with packing are honoured, priced and said in plan.md."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

VARLEN_IMPLEMENTATION = "tunelab_varlen"  # the name registered with transformers' AttentionInterface


class AttentionKind(StrEnum):
    AUTO = "auto"
    VARLEN = "varlen"
    FLEX = "flex_attention"
    FLASH_ATTENTION_2 = "flash_attention_2"
    SDPA = "sdpa"
    EAGER = "eager"


@dataclass(frozen=True)
class AttentionChoice:
    """A run's resolved attention: the kind recorded in run.yaml, and what plan.md says about it."""

    kind: AttentionKind
    packed: bool
    note: str | None = None  # a fallback or a cost the user should know of; None when nothing to say

    @property
    def implementation(self) -> str:
        """The `attn_implementation` transformers is given."""
        return VARLEN_IMPLEMENTATION if self.kind is AttentionKind.VARLEN else self.kind.value

    def describe(self) -> str:
        text = {AttentionKind.VARLEN: "varlen (per example: varlen_attn on CUDA, SDPA per example on CPU)",
                AttentionKind.SDPA: "sdpa", AttentionKind.EAGER: "eager",
                AttentionKind.FLASH_ATTENTION_2: "flash_attention_2 (flash-attn package)",
                AttentionKind.FLEX: "flex_attention (block-sparse mask)"}[self.kind]
        return f"{text}; {self.note}" if self.note else text


def softcap_of(model_config: dict[str, Any] | None) -> float | None:
    """Attention-logit soft-capping of a model (Gemma 2), which neither SDPA nor varlen_attn applies."""
    if not model_config:
        return None
    inner = model_config.get("text_config", model_config)
    value = inner.get("attn_logit_softcapping")
    return float(value) if value else None


def head_dim_of(model_config: dict[str, Any] | None) -> int | None:
    if not model_config:
        return None
    c = model_config.get("text_config", model_config)
    if c.get("head_dim"):
        return int(c["head_dim"])
    if c.get("hidden_size") and c.get("num_attention_heads"):
        return int(c["hidden_size"]) // int(c["num_attention_heads"])
    return None


def resolve_attention(requested: str, packed: bool, model_config: dict[str, Any] | None = None) -> AttentionChoice:
    """The kind a run trains with (never `auto`), from what the spec asks, its packing and its model."""
    kind = AttentionKind(requested)
    softcap = softcap_of(model_config)
    if kind is AttentionKind.AUTO:
        if packed:
            kind = AttentionKind.VARLEN
        else:  # SDPA drops soft-capping silently: a soft-capped model needs eager's explicit math
            kind = AttentionKind.EAGER if softcap else AttentionKind.SDPA
    return AttentionChoice(kind, packed, _note(kind, packed, softcap, head_dim_of(model_config)))


def _note(kind: AttentionKind, packed: bool, softcap: float | None, head_dim: int | None) -> str | None:
    if kind is AttentionKind.VARLEN:
        from tunelab.models.varlen import VARLEN_MAX_HEAD_DIM

        if softcap:
            return (f"soft-capped logits ({softcap:g}): SDPA-style math per example on every device instead of "
                    "varlen_attn (examples stay isolated)")
        if head_dim and (head_dim > VARLEN_MAX_HEAD_DIM or head_dim % 8):
            return f"head dim {head_dim}: SDPA per example instead of varlen_attn (examples stay isolated)"
        return None
    if packed and kind in (AttentionKind.SDPA, AttentionKind.EAGER):
        return "packed rows get a dense (tokens per micro-batch)² mask: more memory and attention work than varlen"
    if kind is AttentionKind.SDPA and softcap:
        return f"SDPA ignores this model's attention soft-capping ({softcap:g}): use eager or auto"
    return None


def register_attention() -> str:
    """Register tunelab's varlen function and its mask function with transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    from tunelab.models.varlen import varlen_attention

    AttentionInterface.register(VARLEN_IMPLEMENTATION, varlen_attention)
    AttentionMaskInterface.register(VARLEN_IMPLEMENTATION, _varlen_mask)
    return VARLEN_IMPLEMENTATION


def _varlen_mask(batch_size: int, q_length: int, kv_length: int, attention_mask: Any = None, **kwargs: Any) -> Any:
    """No mask unless a row is padded: packed rows are separated by their boundaries, not by a mask. A padded
    batch gets SDPA's boolean mask (what `sdpa` would build for it)."""
    if attention_mask is None or (attention_mask.shape[-1] == kv_length and bool(attention_mask.all())):
        return None
    from transformers.masking_utils import sdpa_mask

    kwargs.pop("allow_is_causal_skip", None)
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, attention_mask=attention_mask,
                     allow_is_causal_skip=False, **kwargs)
