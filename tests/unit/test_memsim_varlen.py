"""The memory simulator prices the attention the trainer runs: a packed row through tunelab's varlen function
(PyTorch's varlen_attn, its fake implementation and autograd saves) holds no (ΣT)² tensor, while `sdpa` on the
same packed row holds transformers' boolean block-diagonal mask and, in every layer, the additive bias the
memory-efficient kernel saves for backward. Checked against that arithmetic on a model whose other terms are
small next to T²."""

from __future__ import annotations

from tunelab.estimate.simulator import StepShape, simulate
from tunelab.estimate.simulator.spec import StepConfig

LAYERS, T = 2, 4096
TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": LAYERS,
        "num_attention_heads": 4, "num_key_value_heads": 4, "head_dim": 16, "vocab_size": 256,
        "max_position_embeddings": T, "tie_word_embeddings": True}


def test_dense_packed_mask_costs_its_arithmetic_and_varlen_none_of_it():
    shape = StepShape(4, T // 4, packed=True)
    config = StepConfig(dtype="bfloat16", lora_rank=4)
    dense = simulate(TINY, StepConfig(**{**config.to_dict(), "attention": "sdpa"}), shape, exact=True)
    varlen = simulate(TINY, StepConfig(**{**config.to_dict(), "attention": "varlen"}), shape, exact=True)
    # per layer the bf16 bias the efficient kernel saves for backward (2 bytes × T²); transformers' boolean mask
    # (1 byte × T²) lives only while the forward runs, and the peak is in the backward, where the biases still are
    assert "backward" in dense.peak_phase, dense.peak_phase
    mask_bytes = LAYERS * T * T * 2
    extra = dense.peak_allocated - varlen.peak_allocated
    assert abs(extra - mask_bytes) < 0.05 * mask_bytes, (extra, mask_bytes)
    # varlen holds nothing quadratic: half the tokens, half the activations (a T² term would make it a quarter)
    half = simulate({**TINY, "max_position_embeddings": T // 2}, StepConfig(**{**config.to_dict(), "attention": "varlen"}),
                    StepShape(4, T // 8, packed=True), exact=True)
    assert abs(varlen.activations / half.activations - 2.0) < 0.01, (varlen.activations, half.activations)


def test_packed_varlen_needs_no_more_than_unpacked_for_the_same_tokens():
    """The issue's expectation, on Llama-3.2-1B r64, 16 × 2048 tokens: packed (varlen) ≤ unpacked (padded SDPA)."""
    from tunelab.catalog import resolve_architecture

    cfg = resolve_architecture("Llama-3.2-1B").hf_config()
    packed = simulate(cfg, StepConfig(lora_rank=64, lora_alpha=128.0, attention="varlen"), StepShape(16, 2048, packed=True))
    unpacked = simulate(cfg, StepConfig(lora_rank=64, lora_alpha=128.0, attention="sdpa"), StepShape(16, 2048))
    assert packed.required_gib <= unpacked.required_gib, (packed.required_gib, unpacked.required_gib)
