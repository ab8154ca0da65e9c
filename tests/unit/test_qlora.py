"""QLoRA (training.quantize: 4bit): the memory term and the refusals where it cannot run."""

from __future__ import annotations

import importlib.util

import pytest
from typer.testing import CliRunner

from tunelab.catalog import resolve_architecture, resolve_gpu
from tunelab.cli import app
from tunelab.errors import TunelabError
from tunelab.estimate.memory import MemoryInputs, base_weight_bytes, estimate_memory
from tunelab.plan.planner import make_plan
from tunelab.train import quantize

HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None


@pytest.mark.parametrize("name", ["Llama-3.2-1B", "Qwen2.5-0.5B", "Mistral-7B", "Llama-3.1-8B"])
def test_4bit_base_is_smaller_by_about_1_5_bytes_per_quantized_param(name):
    arch = resolve_architecture(name)
    bf16, q4 = estimate_memory(arch, 2048, MemoryInputs()), estimate_memory(arch, 2048, MemoryInputs(quantize="4bit"))
    assert q4.weights_gib < bf16.weights_gib and q4.peak_gib < bf16.peak_gib
    # only the base weights change: adapters, optimizer, activations and logits are the same tensors
    assert (q4.trainable_gib, q4.activations_gib, q4.logits_gib) == (bf16.trainable_gib, bf16.activations_gib,
                                                                   bf16.logits_gib)
    kept = arch.embedding_params * (1 if arch.tied_embeddings else 2)  # embeddings / lm_head stay bf16
    quantized = arch.parameters - kept
    diff_bytes = (bf16.weights_gib - q4.weights_gib) * 2**30
    # bf16 2 bytes vs NF4 0.5 byte + 0.127 bit of double-quantized block constants (QLoRA paper, §3)
    assert diff_bytes == pytest.approx(quantized * (2 - 0.5 - 0.127 / 8), rel=1e-3)
    assert diff_bytes / quantized == pytest.approx(1.5, abs=0.02)


def test_4bit_weights_of_a_7b_model_are_about_a_third_of_bf16():
    arch = resolve_architecture("Mistral-7B")  # 7.24 B, untied 32k vocabulary: embeddings ~3 % of it
    ratio = base_weight_bytes(arch, 2, "4bit") / base_weight_bytes(arch, 2, None)
    assert 0.25 < ratio < 0.32  # 0.516/2 on 97 % of the weights, 1 on the rest


def test_plan_refuses_qlora_without_a_gpu(write_spec):
    spec = write_spec(training={"quantize": "4bit"})
    with pytest.raises(TunelabError, match="needs a CUDA GPU") as e:
        make_plan(spec)
    assert e.value.field == "training.quantize" and str(spec) in str(e.value.file)
    result = CliRunner().invoke(app, ["plan", str(spec)])
    assert result.exit_code == 1 and "training.quantize" in result.output and "Traceback" not in result.output


@pytest.mark.skipif(HAS_BNB, reason="bitsandbytes is installed here")
def test_plan_refuses_qlora_without_bitsandbytes_even_for_a_gpu(write_spec):
    with pytest.raises(TunelabError, match=r"needs bitsandbytes: install the qlora extra") as e:
        make_plan(write_spec(training={"quantize": "4bit"}), gpu=resolve_gpu("H100"))
    assert e.value.field == "training.quantize"


def test_plain_lora_plans_unchanged_and_the_job_refuses_4bit_on_cpu(write_spec):
    assert make_plan(write_spec()).runs  # quantize unset: no check
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(TunelabError, match="needs a CUDA GPU") as e:
        quantize.load_kwargs("4bit", torch.bfloat16)
    assert e.value.field == "training.quantize"
    assert quantize.load_kwargs(None, torch.float32) == {}


@pytest.mark.skipif(HAS_BNB, reason="bitsandbytes is installed here")
def test_validate_with_a_gpu_named_refuses_qlora_without_bitsandbytes(write_spec):
    from tunelab.plan.validate import validate_path

    spec = write_spec(training={"quantize": "4bit"})
    with pytest.raises(TunelabError, match="needs bitsandbytes") as e:
        validate_path(spec, resolve_gpu("H100"))
    assert e.value.field == "training.quantize"
    assert validate_path(write_spec(), resolve_gpu("H100"))  # without quantize it validates



# -- the k-bit preparation (models/kbit.py): which frozen parameters are cast, on a real tiny model ------------
def tiny_4bit_llama(dtype):
    """A real transformers Llama (untied head) in `dtype` whose Linear layers are the simulator's stand-in for
    bitsandbytes' Linear4bit (uint8 packed weights, as Params4bit stores them); bitsandbytes needs a GPU."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunelab.estimate.simulator.qlora import quantize_linears

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=258, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).to(dtype)
    quantize_linears(model, dtype)
    return model


def dtypes(model) -> dict[str, str]:
    return {name: str(p.dtype).removeprefix("torch.") for name, p in model.named_parameters()}


NOT_QUANTIZED = {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
                 *(f"model.layers.{i}.{norm}.weight" for i in (0, 1)
                   for norm in ("input_layernorm", "post_attention_layernorm"))}


def test_float32_frozen_path_makes_exactly_peft_casts():
    import torch
    from peft import prepare_model_for_kbit_training

    from tunelab.models.kbit import frozen_casts

    ours, peft = tiny_4bit_llama(torch.bfloat16), tiny_4bit_llama(torch.bfloat16)
    assert {c.name for c in frozen_casts(ours, "float32")} == NOT_QUANTIZED
    quantize.prepare(ours, "4bit", False, frozen_dtype="float32")
    prepare_model_for_kbit_training(peft, use_gradient_checkpointing=False)
    assert dtypes(ours) == dtypes(peft)  # peft's own function is the expectation
    assert {n for n, d in dtypes(ours).items() if d == "float32"} == NOT_QUANTIZED
    assert not any(p.requires_grad for p in ours.parameters())


def test_auto_keeps_bf16_embeddings_norms_and_head_as_loaded_and_never_downcasts_fp32():
    import torch

    from tunelab.models.kbit import frozen_casts

    model = tiny_4bit_llama(torch.bfloat16)
    model.model.norm.weight.data = model.model.norm.weight.data.float()  # as transformers' _keep_in_fp32_modules
    assert frozen_casts(model, "compute") == []
    quantize.prepare(model, "4bit", False)  # the default: auto, bf16 compute -> compute
    after = dtypes(model)
    assert {after[n] for n in NOT_QUANTIZED - {"model.norm.weight"}} == {"bfloat16"}
    assert after["model.norm.weight"] == "float32"
    assert {d for n, d in after.items() if n not in NOT_QUANTIZED} == {"uint8"}  # 4-bit weights untouched
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("compute, expected", [("bfloat16", "compute"), ("float16", "float32"),
                                               ("float32", "float32")])
def test_auto_is_compute_only_for_bf16(compute, expected):
    import torch

    from tunelab.models.kbit import resolve_frozen_dtype

    assert resolve_frozen_dtype("auto", getattr(torch, compute)) == expected == resolve_frozen_dtype("auto", compute)
    assert resolve_frozen_dtype("float32", torch.bfloat16) == "float32"


def test_fp16_base_under_auto_gets_peft_fp32_casts():
    import torch

    model = tiny_4bit_llama(torch.float16)
    quantize.prepare(model, "4bit", False)
    assert {n for n, d in dtypes(model).items() if d == "float32"} == NOT_QUANTIZED


def test_checkpointing_makes_the_embeddings_output_require_grad():
    import torch

    model = tiny_4bit_llama(torch.bfloat16)
    quantize.prepare(model, "4bit", True)
    ids = torch.zeros(1, 4, dtype=torch.long)
    assert model.get_input_embeddings()(ids).requires_grad  # frozen embedding, yet its output needs grad
    renamed = hasattr(type(model), "is_activation_checkpointing")  # transformers 5's name
    assert getattr(model, "is_activation_checkpointing" if renamed else "is_gradient_checkpointing")
