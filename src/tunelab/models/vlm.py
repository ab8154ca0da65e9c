"""Vision-language models on disk: telling one from a text model, and loading its weights and processor. The processor
is loaded as its tokenizer and image processor: transformers 5's Processor classes also build a video processor, which
needs torchvision, and tunelab sends no video."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.models.vision import is_vision_config

# LoRA on the language model only: PEFT matches this regex against full module names.
LANGUAGE_LINEAR = (r"^(?!.*\b(?:visual|vision_tower|vision_model)\b).*\."
                   r"(?:q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$")


@dataclass(frozen=True)
class VisionProcessor:
    """A VLM's tokenizer and image processor, and the token each image's patches stand in for."""

    tokenizer: Any
    image_processor: Any
    image_token_id: int


def model_config(path: str | Path) -> dict[str, Any] | None:
    file = Path(path) / "config.json"
    return json.loads(file.read_text()) if file.is_file() else None


def is_vision_language(path: str | Path) -> bool:
    """Whether the model directory holds a vision-language model of a family tunelab counts image tokens for."""
    config = model_config(path)
    return bool(config and is_vision_config(config))


def load_vision_processor(path: str | Path, min_pixels: int | None = None,
                          max_pixels: int | None = None) -> VisionProcessor:
    """Tokenizer + image processor of a VLM directory; min/max_pixels override the saved pixel bounds."""
    from transformers import AutoImageProcessor, AutoTokenizer

    config = model_config(path) or {}
    token_id = config.get("image_token_id")
    if token_id is None:
        raise TunelabError("config.json names no image_token_id: not a Qwen-style vision-language model",
                           file=Path(path) / "config.json")
    tokenizer = AutoTokenizer.from_pretrained(path)
    kwargs = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v}
    try:
        image_processor = AutoImageProcessor.from_pretrained(path, backend="pil", **kwargs)
    except TypeError:  # an image processor class without a backend choice
        image_processor = AutoImageProcessor.from_pretrained(path, **kwargs)
    return VisionProcessor(tokenizer, image_processor, int(token_id))


def load_vlm(path: str | Path, dtype: Any, **kwargs: Any) -> Any:
    """The image-text-to-text model of the directory (transformers' AutoModelForImageTextToText)."""
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, **kwargs)


def lora_targets(requested: list[str] | str) -> list[str] | str:
    """`all-linear` on a VLM: the language model's linear layers (the tower stays frozen); a list as given."""
    return LANGUAGE_LINEAR if requested == "all-linear" else requested
