"""Single terms of the memory simulator against hand arithmetic: the full-logits loss of transformers (the
reference rows of other stacks), the padded-batch attention mask, QLoRA's frozen embeddings and head in
fp32 or in the compute dtype at Llama-3.1-8B's real dimensions, and the 4-bit Linear stand-in.

Each is a difference between two simulated steps that differ in one dimension only, so every other term
cancels, compared with the bytes the term's tensors take (test_memsim.py's r512: one caching-allocator block).
"""

from __future__ import annotations

import pytest
from test_memsim import (
    BF16,
    FP32,
    LAYERS,
    LLAMA,
    QV,
    linears,
    nf4_linear_bytes,
    qlora_kept_bytes,
    r512,
)

from tunelab.estimate.simulator import StepConfig, StepShape, simulate

GIB = 2**30
# Llama-3.1-8B's config.json dimensions, two layers deep (the embeddings and head do not depend on depth)
LLAMA_8B_2L = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 2,
               "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256,
               "tie_word_embeddings": False, "max_position_embeddings": 131072, "rope_theta": 500000.0}


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path))


def test_full_logits_loss_holds_three_fp32_copies_and_the_bf16_logits_at_its_peak():
    """transformers' ForCausalLMLoss on bf16 logits (PEFT's MetaMathQA runs): `logits.float()`, log_softmax,
    nll_loss. At the start of backward live at once: the bf16 logits (the output still holds them), the
    log_softmax output (saved), nll_loss's gradient (zeros then scattered, N×V fp32) and log_softmax's
    gradient (N×V fp32). The fp32 upcast itself is gone: its autograd node saves nothing and log_softmax's
    backward reads its output. So 3 fp32 + 1 bf16 copies of N×V, not 4 fp32 (nor 2)."""
    c = StepConfig(lora_rank=8, lora_targets=QV, loss="full_logits", autocast=False)
    shape = StepShape(2, 64, padded=False)
    n = shape.tokens
    small, large = (simulate({**LLAMA, "vocab_size": v}, c, shape) for v in (8192, 16384))
    dv = 8192
    assert large.peak_phase == small.peak_phase == "step 2: backward"
    embedding = r512(dv * LLAMA["hidden_size"] * BF16)  # tied: one vocab × hidden matrix more
    assert large.weights - small.weights == embedding == 2**20
    # 128 tokens × 8192 more vocabulary: 2 MiB of bf16 logits and 4 MiB per fp32 copy
    assert large.peak_allocated - small.peak_allocated == embedding + r512(n * dv * BF16) + 3 * r512(n * dv * FP32)
    assert large.peak_allocated - small.peak_allocated == 15 * 2**20


def test_padded_rows_cost_one_bf16_bias_of_batch_by_length_squared_per_layer():
    """A padded batch makes transformers build a (B, 1, S, S) boolean mask; SDPA's memory-efficient kernel
    converts it per layer to an additive bias in the query's dtype and saves it: B·S²·2 bytes a layer (not per
    head, not fp32). 4 × 64 and 2 × 128 hold the same tokens, so every per-token term cancels; what else differs
    between the two shapes (position ids, rounding) is what the same pair differs by without padding."""
    c = StepConfig(lora_rank=8, lora_targets=QV, attention="sdpa")

    def diff(padded: bool) -> int:
        wide, long = (simulate(LLAMA, c, StepShape(b, s, padded=padded)) for b, s in ((4, 64), (2, 128)))
        return long.peak_allocated - wide.peak_allocated

    bias = LAYERS * (r512(2 * 128 * 128 * BF16) - r512(4 * 64 * 64 * BF16))
    assert bias == 2 * 32768
    assert diff(True) - diff(False) == bias


@pytest.mark.parametrize("frozen, frozen_bytes", [("float32", FP32), ("compute", BF16)])
def test_qlora_llama_8b_embeddings_and_head_take_3_9_gib_in_fp32_and_2_in_bf16(frozen, frozen_bytes):
    s = simulate(LLAMA_8B_2L, StepConfig(lora_rank=16, quantize="4bit", qlora_frozen_dtype=frozen), StepShape(1, 16))
    m = LLAMA_8B_2L
    quantized = LAYERS * sum(nf4_linear_bytes(o, i) for o, i in linears(m))
    assert s.weights == qlora_kept_bytes(m, frozen_bytes) + quantized
    embeddings_and_head = 2 * r512(128256 * 4096 * frozen_bytes)
    assert embeddings_and_head / GIB == pytest.approx({"float32": 3.914, "compute": 1.957}[frozen], abs=1e-3)


def test_nf4_linear_returns_its_inputs_dtype_and_keeps_nothing_of_the_input():
    """bitsandbytes' Linear4bit casts the input to the compute dtype, multiplies by the dequantized weight and
    casts the output back to the input's dtype; MatMul4Bit saves only the packed weight. After the forward of
    an fp32 input, the only new block is the fp32 output (the bf16 input copy, the dequantized weight and the
    bf16 product are freed)."""
    import torch

    from tunelab.estimate.simulator.qlora import NF4Linear
    from tunelab.estimate.simulator.tracker import StorageTracker

    n, d_in, d_out = 256, 512, 1024
    layer = NF4Linear(d_in, d_out, torch.bfloat16)
    tracker = StorageTracker()
    with tracker:  # the tracker is the fake-tensor mode
        for dtype, nbytes in ((torch.float32, FP32), (torch.bfloat16, BF16)):
            x = torch.empty(n, d_in, dtype=dtype, requires_grad=True)
            before = tracker.allocated
            y = layer(x)
            assert y.dtype == dtype
            assert tracker.allocated - before == r512(n * d_out * nbytes)
            # transient: the input cast (fp32 only), the fp32 absmax and the bf16 weight, then the bf16 product
            y.sum().backward()
            assert x.grad is not None and x.grad.dtype == dtype
            del x, y
