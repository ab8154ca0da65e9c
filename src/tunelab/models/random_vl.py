"""What `tunelab models random` needs beyond text for the vision-language architectures: the nested config cut to a
depth, and the processor files built locally as tiny_vl.py builds them, with the family's special tokens at their real
ids and the real vocabulary size. `--layers K` keeps the first K layers of the language model and of the vision tower
(itself large), with the blocks the vision config names kept where they fall."""

from __future__ import annotations

import copy
from typing import Any

from tokenizers import pre_tokenizers

from tunelab.errors import TunelabError
from tunelab.models.tiny import byte_level_tokenizer
from tunelab.models.tiny_vl import FAMILIES, build_image_processor, chat_template
from tunelab.models.vision import FAMILY_PIXELS

# Qwen's added tokens from <|endoftext|> on, in id order (the published tokenizer.json)
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                 "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                 "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
TOKEN_IDS = {"image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
             "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>"}
BLOCK_INDEX_KEYS = ("fullatt_block_indexes", "deepstack_visual_indexes")
# Qwen3-VL's published preprocessor normalises with mean = std = 0.5; Qwen2.5-VL keeps the processor's CLIP values
NORMALIZATION = {"qwen3_vl": [0.5, 0.5, 0.5]}


def shallow_vlm_config(config: dict[str, Any], layers: int | None, dtype: str) -> dict[str, Any]:
    """The config.json to write: the real one, cut to `layers` language layers and vision blocks, in `dtype`
    (already checked, and the keys a copy drops already dropped, by random_init.build_random_model)."""
    out = copy.deepcopy(config)
    text, vision = out["text_config"], out["vision_config"]
    real = int(text["num_hidden_layers"])
    layers = real if layers is None else layers
    if not 1 <= layers <= real:
        raise TunelabError(f"must be between 1 and {real}, the model's depth (got {layers})", field="--layers")
    text["num_hidden_layers"] = layers
    if isinstance(text.get("max_window_layers"), int):
        text["max_window_layers"] = min(text["max_window_layers"], layers)
    depth = min(layers, int(vision["depth"]))
    vision["depth"] = depth
    for key in BLOCK_INDEX_KEYS:
        if isinstance(vision.get(key), list):
            vision[key] = [i for i in vision[key] if i < depth]
    out["torch_dtype"] = dtype
    return out


def vl_vocabulary(size: int) -> dict[str, int]:
    """Token → id: the 256 byte symbols first, Qwen's special tokens from <|endoftext|> (151643) on, fillers
    everywhere else up to `size`."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    start = 151643
    if size < start + len(QWEN_SPECIALS):
        raise TunelabError(f"a vocabulary of {size} tokens cannot hold Qwen's special tokens at their ids",
                           field="vocab_size")
    slots = alphabet + [f"<|filler_{i}|>" for i in range(len(alphabet), start)] + QWEN_SPECIALS
    slots += [f"<|filler_{i}|>" for i in range(len(slots), size)]
    return {tok: i for i, tok in enumerate(slots)}


def build_vl_tokenizer_at(size: int, template: str, model_max_length: int) -> Any:
    """The byte-level tokenizer of models/tiny_vl.py, laid out at the real model's ids and vocabulary."""
    return byte_level_tokenizer(vl_vocabulary(size), QWEN_SPECIALS, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                unk_token="<|endoftext|>", chat_template=template, model_max_length=model_max_length)


def vl_processor(config: dict[str, Any]) -> tuple[Any, Any]:
    """Tokenizer and image processor of the config's family, checked against the config's token ids."""
    family = FAMILIES[config["model_type"]]
    text = config["text_config"]
    tokenizer = build_vl_tokenizer_at(int(text["vocab_size"]), chat_template(family),
                                      min(int(text.get("max_position_embeddings") or 2048), 1 << 20))
    for key, token in TOKEN_IDS.items():
        if key in config and tokenizer.convert_tokens_to_ids(token) != config[key]:
            raise TunelabError(f"{key} is {config[key]}, not {token}'s id in the Qwen vocabulary", field=key)
    pixels = FAMILY_PIXELS[family.arch]
    image_processor = build_image_processor(family, pixels.min_pixels, pixels.max_pixels)
    if family.arch in NORMALIZATION:
        image_processor.image_mean = image_processor.image_std = NORMALIZATION[family.arch]
    return tokenizer, image_processor
