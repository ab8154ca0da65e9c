"""Training speed from a FLOPs model (the fallback when no similar past run exists).

LoRA on a frozen base: forward 2N FLOPs per token, backward through the frozen weights for the
input gradients 2N more (no weight gradients but the adapters' tiny ones): ≈ 4N per token, plus
attention (4 × layers × seq × hidden per token, forward and backward ≈ ×3). The model states its
MFU; history from measured runs replaces it when there is one.
"""

from __future__ import annotations

from tunelab.catalog import GPU, Architecture

DEFAULT_MFU = 0.35
# Data-parallel scaling: N processes train at N × SCALING_EFFICIENCY × one device's tokens/s. Stated, not
# measured: each LoRA optimizer step adds one all-reduce of the (small) trainable gradients plus a barrier
# on the slowest process; 0.9 is tunelab's assumption for one node until distributed runs in the history
# (summary.json records world_size and their tokens/s over all processes) measure it.
SCALING_EFFICIENCY = 0.9
# Gradient checkpointing recomputes each layer's forward in backward: LoRA's 4N FLOPs per token (forward 2N,
# input gradients 2N) become 6N. The FLOPs model's assumption; measured rows compare like with like.
RECOMPUTE_FACTOR = 1.5


def dense_attention_flops(parameters: int, layers: int, attention_width: int, seq_len: float) -> float:
    """FLOPs per trained token: 4N dense (LoRA) + attention fwd+bwd (causal: half the matrix)."""
    return 4.0 * parameters + 3.0 * 4.0 * layers * seq_len * attention_width / 2


def flops_per_token(arch: Architecture, seq_len: int) -> float:
    return dense_attention_flops(arch.parameters, arch.layers, arch.heads * arch.head_dim, seq_len)


def step_flops_per_token(arch: Architecture, seq_len: int, lora_params: int, kept: float = 1.0) -> float:
    """A LoRA training step's FLOPs per token with its adapters counted: their forward, input and weight gradients
    (6 per adapter parameter) on top of flops_per_token, less the LM head's forward and input gradient (4 × hidden ×
    vocabulary) at the positions whose logits the loss does not read (1 - kept: models/loss_positions.py); what
    prices one timed shape's step at another's."""
    return flops_per_token(arch, seq_len) + 6.0 * lora_params - 4.0 * arch.embedding_params * (1.0 - kept)


def forward_flops_per_token(arch: Architecture, seq_len: int, lora_params: int, kept: float = 1.0) -> float:
    """A forward without gradients (a validation's): 2N dense, attention once (causal: half the matrix), the
    adapters' 2 per parameter, less the LM head (2 × hidden × vocabulary) at the positions whose logits its loss
    does not read (1 - kept; TRL's validation of a loss keeps only those, as training does)."""
    return (2.0 * arch.parameters + 4.0 * arch.layers * seq_len * arch.heads * arch.head_dim / 2
            + 2.0 * lora_params - 2.0 * arch.embedding_params * (1.0 - kept))


def model_tokens_per_s(arch: Architecture, gpu: GPU, seq_len: int, mfu: float = DEFAULT_MFU) -> float | None:
    if not gpu.bf16_tflops:
        return None
    return mfu * gpu.bf16_tflops * 1e12 / flops_per_token(arch, seq_len)
