"""How many tokens an image becomes: one rule for plan.md, the data path and the memory simulator.

Qwen-VL processors resize an image to multiples of `patch_size * merge_size` within [min_pixels, max_pixels]
(transformers' `smart_resize`, called rather than re-derived), cut it into patches (grid t·h·w rows of `pixel_values`),
and the merger folds `merge_size`² patches into one `<|image_pad|>` token. The families differ in patch size and pixel
bounds (FAMILY_PIXELS, from their published configs)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

PREPROCESSOR_FILE = "preprocessor_config.json"
IMAGE_CHANNELS = 3


@dataclass(frozen=True)
class PixelDefaults:
    """A family's processor defaults, used when a model dir has no preprocessor_config.json."""

    min_pixels: int
    max_pixels: int


# The published preprocessor_config.json of Qwen/Qwen2.5-VL-7B-Instruct and Qwen/Qwen3-VL-8B-Instruct;
# Qwen2-VL's equals Qwen2.5-VL's.
FAMILY_PIXELS: dict[str, PixelDefaults] = {
    "qwen2_vl": PixelDefaults(min_pixels=56 * 56, max_pixels=28 * 28 * 16384),
    "qwen2_5_vl": PixelDefaults(min_pixels=56 * 56, max_pixels=28 * 28 * 16384),
    "qwen3_vl": PixelDefaults(min_pixels=256 * 256, max_pixels=4096 * 4096),
    "qwen3_vl_moe": PixelDefaults(min_pixels=256 * 256, max_pixels=4096 * 4096),
}
VISION_FAMILIES = frozenset(FAMILY_PIXELS)


@dataclass(frozen=True)
class VisionGeometry:
    """The settings that decide an image's patch grid: vision config + the processor's pixel bounds."""

    model_type: str
    patch_size: int
    temporal_patch_size: int
    merge_size: int
    min_pixels: int
    max_pixels: int

    @property
    def factor(self) -> int:
        """Both resized sides are multiples of this (one merged token covers factor × factor pixels)."""
        return self.patch_size * self.merge_size

    @property
    def patch_dim(self) -> int:
        """Width of one `pixel_values` row: channels × temporal patch × patch²."""
        return IMAGE_CHANNELS * self.temporal_patch_size * self.patch_size**2

    def with_pixels(self, min_pixels: int | None = None, max_pixels: int | None = None) -> VisionGeometry:
        """The run's min/max pixels over the processor's (None keeps the processor's)."""
        lo = self.min_pixels if min_pixels is None else min_pixels
        hi = self.max_pixels if max_pixels is None else max_pixels
        if lo > hi:
            raise TunelabError(f"min_pixels {lo} is above max_pixels {hi}", field="training.min_pixels")
        if hi < self.factor**2:
            raise TunelabError(f"max_pixels {hi} is below one merged patch ({self.factor}² = {self.factor**2})",
                               field="training.max_pixels")
        return replace(self, min_pixels=lo, max_pixels=hi)


@dataclass(frozen=True)
class ImageTokens:
    """One image as the processor sees it: its resized size, patch grid and tokens in the LM sequence."""

    width: int
    height: int
    resized_width: int
    resized_height: int
    grid_t: int
    grid_h: int
    grid_w: int
    merge_size: int
    patch_dim: int

    @property
    def grid_thw(self) -> tuple[int, int, int]:
        """The image's row of `image_grid_thw`."""
        return (self.grid_t, self.grid_h, self.grid_w)

    @property
    def patches(self) -> int:
        """Rows of `pixel_values` (the vision tower's sequence length for this image)."""
        return self.grid_t * self.grid_h * self.grid_w

    @property
    def tokens(self) -> int:
        """`<|image_pad|>` tokens in the language model's sequence (after the merger)."""
        return self.patches // self.merge_size**2

    @property
    def sequence_tokens(self) -> int:
        """Tokens the image adds to the LM sequence with its `<|vision_start|>` / `<|vision_end|>` pair."""
        return self.tokens + 2

    @property
    def resized_pixels(self) -> int:
        return self.resized_width * self.resized_height


def resized_size(width: int, height: int, geometry: VisionGeometry) -> tuple[int, int]:
    """(width, height) after the processor's resize: transformers' own `smart_resize`."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    if width < 1 or height < 1:
        raise TunelabError(f"an image of {width}x{height} pixels has no area")
    try:
        h, w = smart_resize(height, width, factor=geometry.factor,
                            min_pixels=geometry.min_pixels, max_pixels=geometry.max_pixels)
    except ValueError as exc:  # aspect ratio over 200
        raise TunelabError(f"image {width}x{height}: {exc}") from exc
    return int(w), int(h)


def image_tokens(width: int, height: int, geometry: VisionGeometry) -> ImageTokens:
    """An image of width × height pixels → resized size → grid (t, h, w) → its image tokens."""
    rw, rh = resized_size(width, height, geometry)
    # A still image is one frame; the processor repeats it temporal_patch_size times inside each patch row.
    return ImageTokens(width=width, height=height, resized_width=rw, resized_height=rh, grid_t=1,
                       grid_h=rh // geometry.patch_size, grid_w=rw // geometry.patch_size,
                       merge_size=geometry.merge_size, patch_dim=geometry.patch_dim)


def budget_image(geometry: VisionGeometry) -> ImageTokens:
    """The image a pixel budget plans for: a square of max_pixels (the most tokens one image can become)."""
    side = math.isqrt(geometry.max_pixels)
    return image_tokens(side, side, geometry)


def geometry_from_config(config: dict[str, Any], processor: dict[str, Any] | None = None) -> VisionGeometry:
    """A VLM's geometry from its config.json and preprocessor_config.json: the processor's values win where it states
    them (it builds `pixel_values`), else the vision config's, else the family's defaults."""
    model_type = str(config.get("model_type", ""))
    vision = config.get("vision_config")
    if not isinstance(vision, dict) or "patch_size" not in vision:
        raise TunelabError(f"model type {model_type or '?'} has no vision_config with a patch_size: "
                           "not a vision-language model tunelab knows", field="model_type")
    proc = processor or {}
    defaults = FAMILY_PIXELS.get(model_type)
    raw_size = proc.get("size")
    size: dict[str, Any] = raw_size if isinstance(raw_size, dict) else {}
    lo = proc.get("min_pixels", size.get("shortest_edge", defaults.min_pixels if defaults else None))
    hi = proc.get("max_pixels", size.get("longest_edge", defaults.max_pixels if defaults else None))
    if lo is None or hi is None:
        raise TunelabError(f"model type {model_type} states no min/max pixels and tunelab knows no default for it",
                           file=PREPROCESSOR_FILE, field="max_pixels")
    vis: dict[str, Any] = vision
    return VisionGeometry(
        model_type=model_type,
        patch_size=int(proc.get("patch_size", vis["patch_size"])),
        temporal_patch_size=int(proc.get("temporal_patch_size", vis.get("temporal_patch_size", 2))),
        merge_size=int(proc.get("merge_size", vis.get("spatial_merge_size", 2))),
        min_pixels=int(lo), max_pixels=int(hi))


def is_vision_config(config: dict[str, Any]) -> bool:
    """Whether a config.json is a vision-language model of a family tunelab counts image tokens for."""
    return config.get("model_type") in VISION_FAMILIES and isinstance(config.get("vision_config"), dict)


def read_geometry(model_dir: str | Path) -> VisionGeometry:
    """A model dir's geometry: config.json plus preprocessor_config.json when present."""
    root = Path(model_dir)
    config = _read_json(root / "config.json")
    proc_path = root / PREPROCESSOR_FILE
    return geometry_from_config(config, _read_json(proc_path) if proc_path.exists() else None)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TunelabError(f"cannot read it: {exc}", file=path) from exc
    if not isinstance(data, dict):
        raise TunelabError("is not a JSON object", file=path)
    return data
