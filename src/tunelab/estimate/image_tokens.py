"""What a run's images cost before any image is read: the pixel budget → one image's patch grid and tokens
(models/vision.py), times the images per example. The simulator runs every row with the largest grid an image can
become: the worst case, as rows padded to max_seq_len are for text."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.estimate.memory import MemoryInputs
from tunelab.models.vision import (
    ImageTokens,
    VisionGeometry,
    budget_image,
    geometry_from_config,
    is_vision_config,
    read_geometry,
)


@dataclass(frozen=True)
class ImagePlan:
    """Images per example at a pixel budget, and what they take of the language model's sequence."""

    images_per_example: int
    geometry: VisionGeometry
    image: ImageTokens  # one image at the budget

    @property
    def tokens_per_example(self) -> int:
        """LM tokens of an example's images, with each image's start and end tokens."""
        return self.images_per_example * self.image.sequence_tokens

    def apply(self, inputs: MemoryInputs) -> MemoryInputs:
        return replace(inputs, images_per_example=self.images_per_example, image_grid=self.image.grid_thw)

    def to_json(self) -> dict[str, Any]:
        return {"images_per_example": self.images_per_example, "min_pixels": self.geometry.min_pixels,
                "max_pixels": self.geometry.max_pixels, "patch_size": self.geometry.patch_size,
                "merge_size": self.geometry.merge_size,
                "image_size": [self.image.resized_width, self.image.resized_height],
                "image_grid_thw": list(self.image.grid_thw), "patches_per_image": self.image.patches,
                "tokens_per_image": self.image.tokens, "image_tokens_per_example": self.tokens_per_example}


def image_plan(model: str | Path, model_config: dict[str, Any], images_per_example: int,
               min_pixels: int | None, max_pixels: int | None, max_seq_len: int) -> ImagePlan:
    """The plan for `images_per_example` images at the budget; refused when they do not fit max_seq_len."""
    geometry = _geometry(model, model_config).with_pixels(min_pixels, max_pixels)
    plan = ImagePlan(images_per_example, geometry, budget_image(geometry))
    if plan.tokens_per_example >= max_seq_len:
        raise TunelabError(f"{images_per_example} image(s) of up to {geometry.max_pixels:,} pixels take "
                           f"{plan.tokens_per_example} tokens, not less than max_seq_len {max_seq_len}: truncation "
                           "would cut image tokens (lower max_pixels or raise max_seq_len)", field="max_seq_len")
    return plan


def run_images(inputs: MemoryInputs, model: str | Path, model_config: dict[str, Any], min_pixels: int | None,
               max_pixels: int | None, longest: int) -> MemoryInputs:
    """A planned VLM run's images for the simulator: one image at the run's pixel budget (smaller when the longest row
    cannot hold its tokens) in the longest row, whose length counts every image's tokens. Text: unchanged."""
    if not is_vision_config(model_config):
        return inputs
    geometry = _geometry(model, model_config).with_pixels(min_pixels, max_pixels)
    image = budget_image(geometry)
    if image.sequence_tokens > longest:  # the data's images are smaller than the budget: the largest that fits
        fit = (longest - 2) * geometry.factor**2
        if fit < geometry.min_pixels:
            return inputs  # no image fits the longest row: a text step
        image = budget_image(replace(geometry, max_pixels=fit))
    return ImagePlan(1, geometry, image).apply(inputs)


def _geometry(model: str | Path, model_config: dict[str, Any]) -> VisionGeometry:
    path = Path(model).expanduser()
    return (read_geometry(path) if path.is_dir() and (path / "config.json").is_file()
            else geometry_from_config(model_config))
