"""Packed rows attend per example (models/varlen.py): the packed forward and backward equal the examples run
one by one through transformers' own eager attention (an independent implementation), nothing leaks between
packed examples, and the resolution of `training.attention` is what plan and the job share.

Tolerances: fp32 throughout. The packed and the one-by-one computations do the same arithmetic in a different
summation order (a row of a GEMM over more rows, SDPA's blocked softmax vs eager's), so they agree to a few
units of fp32's 2⁻²⁴ ≈ 6e-8 relative error per operation; over 2 layers of width 64 and ≤ 90 tokens that stays
below 1e-5 of the values' scale (measured: ≤ 4e-7 on logits). The dense-SDPA trap below differs by > 1e-2,
so the tolerance separates right from wrong by three orders of magnitude.
"""

from __future__ import annotations

import copy

import pytest
import torch

from tunelab.models.attention import AttentionKind, register_attention, resolve_attention
from tunelab.models.lora import lora_config

LENGTHS = [37, 1, 5, 90, 2]  # very different lengths and a one-token example
FAMILIES = {
    "llama": {},
    "qwen2": {},
    "gemma": {},
    "gemma2": {"sliding_window": 8},  # soft-capped logits and a sliding window shorter than the examples
    "mistral": {"sliding_window": 16},
}


def _config(model_type: str, **extra):
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=211, **extra)


def _pair(model_type: str, lora: bool = False):
    """(varlen model, eager reference) with identical weights (and identical, non-zero LoRA adapters)."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    register_attention()
    cfg = _config(model_type, **FAMILIES[model_type])
    torch.manual_seed(0)
    ref = AutoModelForCausalLM.from_config(copy.deepcopy(cfg), attn_implementation="eager")
    model = AutoModelForCausalLM.from_config(copy.deepcopy(cfg), attn_implementation="tunelab_varlen")
    model.load_state_dict(ref.state_dict())
    if lora:
        ref, model = (get_peft_model(m, lora_config(4, 8.0, 0.0, "all-linear", ())) for m in (ref, model))
        gen = torch.Generator().manual_seed(1)
        adapters = {n: torch.randn(p.shape, generator=gen) * 0.1 for n, p in ref.named_parameters() if p.requires_grad}
        for m in (ref, model):
            for n, p in m.named_parameters():
                if n in adapters:
                    p.data.copy_(adapters[n])
    return model, ref


def _examples(seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 211, (n,), generator=gen) for n in LENGTHS]


def _packed(examples: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """What TRL's padding-free collator gives the model: one row and restarting position ids."""
    return {"input_ids": torch.cat(examples)[None],
            "position_ids": torch.cat([torch.arange(len(e)) for e in examples])[None]}


def _split(logits: torch.Tensor, examples: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(logits[0].split([len(e) for e in examples]))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_packed_logits_equal_each_example_alone(family):
    model, ref = _pair(family)
    examples = _examples()
    with torch.no_grad():
        packed = _split(model(**_packed(examples), use_cache=False).logits, examples)
        for got, e in zip(packed, examples):
            alone = ref(input_ids=e[None], use_cache=False).logits[0]
            assert (got - alone).abs().max().item() < 1e-5 * max(1.0, alone.abs().max().item())


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma", "gemma2"])
def test_packed_lora_gradients_equal_the_sum_over_examples(family):
    """Loss summed over tokens: the packed row's gradient is the sum of the examples' gradients."""
    model, ref = _pair(family, lora=True)
    examples = _examples(seed=3)

    def token_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits[:-1], ids[1:], reduction="sum")

    logits = _split(model(**_packed(examples), use_cache=False).logits, examples)
    sum(token_loss(lg, e) for lg, e in zip(logits, examples) if len(e) > 1).backward()
    for e in examples:
        if len(e) > 1:
            token_loss(ref(input_ids=e[None], use_cache=False).logits[0], e).backward()
    got = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    want = {n: p.grad for n, p in ref.named_parameters() if p.requires_grad}
    assert got.keys() == want.keys() and len(got) > 8
    for name, g in want.items():
        assert g is not None and g.abs().max() > 0, name
        assert (got[name] - g).abs().max().item() < 1e-5 * max(1.0, g.abs().max().item()), name


def test_editing_one_example_leaves_the_others_unchanged():
    model, _ = _pair("llama")
    examples = _examples()
    edited = [e.clone() for e in examples]
    edited[3] = (edited[3] + 7) % 211
    with torch.no_grad():
        before = _split(model(**_packed(examples), use_cache=False).logits, examples)
        after = _split(model(**_packed(edited), use_cache=False).logits, edited)
    for i, (a, b) in enumerate(zip(before, after)):
        if i == 3:
            assert not torch.equal(a, b)
        else:
            assert torch.equal(a, b), f"example {i} changed when example 3 was edited"


def test_an_all_ones_mask_and_the_cache_do_not_merge_examples():
    """transformers stops detecting packed boundaries with an all-ones mask or with the KV cache on (the trap
    of reference/packed-attention.md): tunelab's function reads the boundaries itself, so both stay isolated,
    while transformers' dense SDPA path then attends across examples."""
    model, ref = _pair("llama")
    examples = _examples()
    batch = _packed(examples)
    with torch.no_grad():
        isolated = model(**batch, use_cache=False).logits
        assert torch.equal(model(**batch, attention_mask=torch.ones_like(batch["input_ids"])).logits, isolated)
        assert torch.equal(model(**batch, use_cache=True).logits, isolated)
        sdpa = copy.deepcopy(ref)
        sdpa.set_attn_implementation("sdpa")
        merged = sdpa(**batch, use_cache=True).logits
    assert (merged - isolated).abs().max().item() > 1e-2


def test_auto_resolves_by_packing_and_model():
    gemma2 = _config("gemma2").to_dict()
    assert resolve_attention("auto", packed=True).kind is AttentionKind.VARLEN
    assert resolve_attention("auto", packed=False).kind is AttentionKind.SDPA
    assert resolve_attention("auto", packed=False, model_config=gemma2).kind is AttentionKind.EAGER
    soft = resolve_attention("auto", packed=True, model_config=gemma2)
    assert soft.kind is AttentionKind.VARLEN and "soft-capped" in (soft.note or "")
    dense = resolve_attention("sdpa", packed=True)
    assert dense.kind is AttentionKind.SDPA and dense.packed and "dense" in (dense.note or "")  # kept, and said
    assert resolve_attention("varlen", packed=True).implementation == "tunelab_varlen"


def test_under_autocast_fp32_inputs_are_cast_as_sdpa_casts_them():
    """QLoRA with peft's fp32 casts hands attention fp32 q/k/v under bf16 autocast: SDPA (an autocast
    lower-precision op) would compute in bf16, and so does the varlen function (on a GPU: varlen_attn)."""
    from tunelab.models.varlen import varlen_attention

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 12, 16, generator=gen) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = varlen_attention(torch.nn.Module(), q, k, v, None, position_ids=torch.arange(12)[None])
        want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert got.dtype == torch.bfloat16 == want.dtype
    assert torch.equal(got, want.transpose(1, 2))
