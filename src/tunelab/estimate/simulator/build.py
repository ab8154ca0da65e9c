"""Build the model a run trains, as the trainer builds it, with no weights: on the `meta` device first (transformers,
PEFT and TRL run their own code), then every parameter replaced by a fake tensor, one per distinct tensor, so tied
weights stay one storage. The calls mirror train/ and TRL's SFTTrainer: dtype and attention, QLoRA's layers and k-bit
preparation, checkpointing, the run's LoraConfig (adapters in fp32 unless quantized), TRL's fused LM head."""

from __future__ import annotations

import copy
from typing import Any

import torch

from tunelab.estimate.simulator.attention import flash_attention_2
from tunelab.estimate.simulator.qlora import quantize_linears
from tunelab.estimate.simulator.spec import StepConfig
from tunelab.models.attention import AttentionKind, register_attention
from tunelab.models.kbit import prepare_kbit
from tunelab.models.lora import lora_config
from tunelab.models.vlm import lora_targets

FLASH_NAME = "tunelab_varlen_standin"


def _register_flash() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(FLASH_NAME, flash_attention_2)
    AttentionMaskInterface.register(FLASH_NAME, flash_attention_mask)


def hf_config(model_config: dict[str, Any]) -> Any:
    """transformers' config of a config.json's dict, on a deep copy: transformers writes into nested dicts it is given
    (rope_scaling gains rope_theta), which would change the caller's dict, the simulation's cache key among them."""
    from transformers import AutoConfig

    cfg = copy.deepcopy(model_config)
    model_type = cfg.pop("model_type")
    for key in ("architectures", "transformers_version", "auto_map", "quantization_config", "torch_dtype", "dtype"):
        cfg.pop(key, None)
    return AutoConfig.for_model(model_type, **cfg)


def build_on_meta(model_config: dict[str, Any], c: StepConfig) -> torch.nn.Module:
    """The trained model (PEFT-wrapped, fused head added), all tensors on `meta`."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText
    from trl.trainer.utils import add_fused_lm_head

    dtype = getattr(torch, c.dtype)
    attention = c.attention
    if attention == "flash_attention_2":
        _register_flash()
        attention = FLASH_NAME
    elif attention == AttentionKind.VARLEN:  # the job's own function; run under as_if_on("cuda") (run.py)
        attention = register_attention()
    vision = isinstance(model_config.get("vision_config"), dict)  # a VLM, built as the job loads it (models/vlm.py)
    auto = AutoModelForImageTextToText if vision else AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(hf_config(model_config), dtype=dtype, attn_implementation=attention)
    if c.quantize == "4bit":  # the job's k-bit preparation (train/quantize.py), frozen dtype resolved alike
        quantize_linears(model, dtype)
        model = prepare_kbit(model, c.qlora_frozen_dtype, c.gradient_checkpointing)
    if c.gradient_checkpointing:  # transformers 5's name, as the job's (train/trainer.py)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    targets: list[str] | tuple[str, ...] | str = c.lora_targets
    if vision:  # all-linear means the language model's linears; the vision tower stays frozen
        targets = lora_targets(targets if isinstance(targets, str) else list(targets))
    lora = lora_config(c.lora_rank, c.lora_alpha, c.lora_dropout, targets, c.modules_to_save)
    lora.use_dora = c.use_dora
    with torch.device("meta"):  # PEFT would make each adapter on the CPU, initialize it, then move it to meta
        model = get_peft_model(model, lora)
    if c.gradient_checkpointing:
        model.enable_input_require_grads()
    if c.quantize == "4bit":  # TRL: adapters of a quantized base in bf16
        for name, p in model.named_parameters():
            if p.requires_grad and "lora_magnitude_vector" not in name:
                p.data = p.data.to(torch.bfloat16)
    add_fused_lm_head(model.get_base_model(), outputs=("log_probs", "entropy", "is_top1"))
    return model


def materialize(model: torch.nn.Module) -> None:
    """Give every parameter and buffer a fake CPU tensor, one per distinct meta tensor (tied weights share one)."""
    params: dict[int, torch.nn.Parameter] = {}
    buffers: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None:
                if id(p) not in params:
                    params[id(p)] = torch.nn.Parameter(torch.empty(p.shape, dtype=p.dtype), requires_grad=p.requires_grad)
                module._parameters[name] = params[id(p)]
        for name, b in list(module._buffers.items()):
            if b is not None:
                if id(b) not in buffers:
                    buffers[id(b)] = torch.empty(b.shape, dtype=b.dtype)
                module._buffers[name] = buffers[id(b)]
