"""What a simulated step depends on: the memory-relevant fields of a run and the micro-batch's shape.
Frozen and hashable: the cache key is made of these and the model's config.json."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

Attention = Literal["varlen", "sdpa", "eager", "flash_attention_2"]
ATTENTIONS: tuple[str, ...] = ("varlen", "sdpa", "eager", "flash_attention_2")


@dataclass(frozen=True)
class StepConfig:
    """The training fields that change memory (everything else — learning rate, epochs — does not)."""

    dtype: str = "bfloat16"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] | str = "all-linear"
    modules_to_save: tuple[str, ...] = ()
    gradient_checkpointing: bool = False
    quantize: str | None = None
    qlora_frozen_dtype: str = "auto"  # QLoRA's frozen embeddings/head/norms: auto|compute|float32 (models/kbit.py)
    attention: str = "sdpa"
    gradient_accumulation_steps: int = 1
    weight_decay: float = 0.0
    # How tunelab trains: TRL's fused LM head and autocast in `dtype`. Other stacks (for checking the simulator
    # against what they measured) compute the loss from the full logits ("full_logits", transformers' own loss)
    # or keep the weights in bf16 without autocast.
    loss: str = "trl_fused"
    autocast: bool = True
    use_dora: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StepShape:
    """One micro-batch. Packed (TRL's BFD, padding-free): one flattened row of micro_batch × seq_len with position ids.
    Unpacked: rows padded to `seq_len` with an attention mask; `padded`: some row is shorter, which makes transformers
    build an explicit mask. A VLM row holds `images_per_row` images of grid `image_grid`."""

    micro_batch: int
    seq_len: int
    packed: bool = False
    padded: bool | None = None
    images_per_row: int = 0
    image_grid: tuple[int, int, int] = (0, 0, 0)

    @property
    def tokens(self) -> int:
        return self.micro_batch * self.seq_len

    def cu_seqlens(self) -> torch.Tensor:
        """Packed rows' boundaries as TRL's collator gives them: a real tensor even in fake mode; every row full."""
        import torch
        from torch._subclasses.fake_tensor import unset_fake_temporarily

        with unset_fake_temporarily():
            return torch.arange(0, self.tokens + 1, self.seq_len, dtype=torch.int32)

    @property
    def needs_mask(self) -> bool:
        """Whether transformers builds an explicit mask: packed rows hold several sequences; padded rows padding."""
        if self.packed:
            return True
        return self.padded if self.padded is not None else self.micro_batch > 1

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tokens": self.tokens}
