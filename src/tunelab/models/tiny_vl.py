"""Tiny vision-language models of the real Qwen2.5-VL and Qwen3-VL architectures, built offline from a seed, with the
family's image processor, special tokens and real chat template (TRL's copy), so every path that loads a Qwen VLM from
disk (processor, image tokens, M-RoPE, the merger) runs on a CPU in seconds."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from tokenizers import pre_tokenizers

from tunelab.compat import quiet_hf_progress_bars
from tunelab.errors import TunelabError
from tunelab.models.tiny import byte_level_tokenizer

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
BUILDER = "tunelab.models.tiny_vl"


@dataclass(frozen=True)
class Family:
    """What differs between the two families: patch size, template, config classes."""

    arch: str
    patch_size: int
    template: str  # file name under trl/chat_templates

    @property
    def factor(self) -> int:
        """Resized sides are multiples of this: patch × merge."""
        return self.patch_size * 2


FAMILIES = {"qwen2_5_vl": Family("qwen2_5_vl", 14, "qwen2_5_vl.jinja"),
            "qwen3_vl": Family("qwen3_vl", 16, "qwen3_vl.jinja")}


def family_of(arch: str) -> Family:
    if arch not in FAMILIES:
        raise TunelabError(f"unknown architecture {arch!r}: use one of {', '.join(FAMILIES)}", field="--arch")
    return FAMILIES[arch]


def chat_template(family: Family) -> str:
    """The family's original chat template, as the installed TRL ships it (no hub)."""
    path = files("trl") / "chat_templates" / family.template
    if not path.is_file():
        raise TunelabError(f"the installed trl has no chat_templates/{family.template}; trl>=1.16 ships it",
                           field="--arch")
    return path.read_text(encoding="utf-8")


def build_vl_tokenizer(template: str) -> Any:
    """Byte-level tokenizer (one token per byte, no merges) with the Qwen VL special tokens."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + alphabet)}
    return byte_level_tokenizer(vocab, SPECIAL_TOKENS, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                chat_template=template, model_max_length=2048)


def build_image_processor(family: Family, min_pixels: int, max_pixels: int) -> Any:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=family.patch_size,
                                    merge_size=2, temporal_patch_size=2)


def _config(family: Family, tokenizer: Any, hidden: int, layers: int, vision_hidden: int, vision_depth: int) -> Any:
    heads = max(1, hidden // 64)
    head_dim = hidden // heads
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    text: dict[str, Any] = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden,
                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                max_position_embeddings=2048, tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    vision: dict[str, Any] = dict(depth=vision_depth, hidden_size=vision_hidden, intermediate_size=4 * vision_hidden,
                  num_heads=max(1, vision_hidden // 32), patch_size=family.patch_size, spatial_merge_size=2,
                  temporal_patch_size=2, out_hidden_size=hidden)
    half = head_dim // 2  # M-RoPE splits the rotary half of a head into (time, height, width) sections
    if family.arch == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        section = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]  # 16/24/24 of 64, scaled
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": section}
        vision.update(window_size=4 * family.factor, fullatt_block_indexes=[vision_depth - 1])
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
    from transformers import Qwen3VLConfig

    section = [half - 2 * (5 * half // 16), 5 * half // 16, 5 * half // 16]  # 24/20/20 of 64, scaled
    text.update(head_dim=head_dim, rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                                                    "mrope_section": section, "mrope_interleaved": True})
    vision.update(num_position_embeddings=256, deepstack_visual_indexes=[0])
    return Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)


def build_tiny_vl(out_dir: str | Path, arch: str = "qwen2_5_vl", layers: int = 2, hidden: int = 128,
                  vision_hidden: int = 64, vision_depth: int = 2, seed: int = 0,
                  min_pixels: int | None = None, max_pixels: int | None = None) -> Path:
    """Write a random-init tiny VLM of `arch` + its processor to out_dir; same seed → identical weights.
    Pixel bounds default to one merged token (factor²) and 16 of them, so a 56×56 picture is a few tokens."""
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig

    family = family_of(arch)
    if layers < 1 or vision_depth < 1:
        raise TunelabError("must be at least 1", field="--layers")
    if hidden < 64 or hidden % 64:
        raise TunelabError("must be a multiple of 64, at least 64", field="--hidden")

    quiet_hf_progress_bars()
    min_pixels = min_pixels or family.factor ** 2
    max_pixels = max_pixels or 16 * family.factor ** 2
    tokenizer = build_vl_tokenizer(chat_template(family))
    image_processor = build_image_processor(family, min_pixels, max_pixels)
    config = _config(family, tokenizer, hidden, layers, vision_hidden, vision_depth)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id, do_sample=False)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    image_processor.save_pretrained(out)
    meta = {"builder": BUILDER, "arch": arch, "layers": layers, "hidden": hidden, "vision_hidden": vision_hidden,
            "vision_depth": vision_depth, "seed": seed, "min_pixels": min_pixels, "max_pixels": max_pixels,
            "chat_template": f"trl/chat_templates/{family.template}",
            "parameters": sum(p.numel() for p in model.parameters())}
    (out / "tunelab_tiny.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out
