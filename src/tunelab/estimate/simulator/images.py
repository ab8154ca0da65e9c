"""A vision-language micro-batch as the processor and TRL's collator give it, for the simulated step: each row holds
`images_per_row` images of one planned grid among its `seq_len` tokens, `pixel_values` and `image_grid_thw` as the
processor returns them. The values that decide shapes (token ids, grids, Qwen2.5-VL's window order) are known to the
tracker (values.py); the rest are fake; M-RoPE positions are given."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import _disable_current_modes

from tunelab.errors import TunelabError
from tunelab.estimate.simulator.spec import StepShape
from tunelab.estimate.simulator.values import KnownValues


def image_tokens_per_row(shape: StepShape, merge_size: int) -> int:
    """LM tokens the images of one row take, with each image's start and end tokens."""
    t, h, w = shape.image_grid
    return shape.images_per_row * (t * h * w // merge_size**2 + 2)


def image_inputs(shape: StepShape, config: Any, values: KnownValues) -> dict[str, Any]:
    """input_ids, attention mask, labels, pixel_values, image_grid_thw (+ precomputed vision kwargs)."""
    vision = config.vision_config
    merge = int(vision.spatial_merge_size)
    per_row = image_tokens_per_row(shape, merge)
    if per_row > shape.seq_len:
        raise TunelabError(f"{shape.images_per_row} image(s) of grid {shape.image_grid} take {per_row} tokens, "
                           f"more than the sequence's {shape.seq_len}: truncation would cut image tokens",
                           field="max_seq_len")
    if shape.packed:
        raise TunelabError("packed rows with images are not simulated: plan image rows unpacked", field="packing")
    rows, n_images = shape.micro_batch, shape.micro_batch * shape.images_per_row
    t, h, w = shape.image_grid
    with _disable_current_modes():  # real values, uncounted (their fake twins are the allocations)
        ids = _row_ids(shape, config, merge).expand(rows, -1).contiguous()
        grid = torch.tensor([[t, h, w]] * n_images, dtype=torch.long)
        extra = _precomputed(grid, vision)
    inputs: dict[str, Any] = {
        "input_ids": _known(ids, values),
        "labels": torch.zeros(rows, shape.seq_len, dtype=torch.long),
        "attention_mask": torch.ones(rows, shape.seq_len, dtype=torch.long),
        "position_ids": torch.zeros(3, rows, shape.seq_len, dtype=torch.long),
        "pixel_values": torch.zeros(n_images * t * h * w, _patch_dim(vision), dtype=torch.float32),
        "image_grid_thw": _known(grid, values),
    }
    inputs.update({k: _known(v, values) for k, v in extra.items()})
    return inputs


def _row_ids(shape: StepShape, config: Any, merge: int) -> torch.Tensor:
    t, h, w = shape.image_grid
    ids = torch.zeros(1, shape.seq_len, dtype=torch.long)
    pos = 1  # after one text token
    for _ in range(shape.images_per_row):
        k = t * h * w // merge**2
        ids[0, pos] = config.vision_start_token_id
        ids[0, pos + 1:pos + 1 + k] = config.image_token_id
        ids[0, pos + 1 + k] = config.vision_end_token_id
        pos += k + 2
    return ids


def _patch_dim(vision: Any) -> int:
    return int(getattr(vision, "in_channels", 3)) * int(vision.temporal_patch_size) * int(vision.patch_size) ** 2


def _precomputed(grid: torch.Tensor, vision: Any) -> dict[str, torch.Tensor]:
    """Qwen2.5-VL's window order (its index is built from an arange, which no value propagation can follow),
    by transformers' own function, under the `image_` names the model's image features accept."""
    if getattr(vision, "window_size", None) is None:
        return {}
    from transformers.vision_utils import get_vision_window_index

    index, cu = get_vision_window_index(grid, spatial_merge_size=int(vision.spatial_merge_size),
                                        window_size=int(vision.window_size), patch_size=int(vision.patch_size))
    return {"image_window_index": index, "image_cu_window_seqlens": cu}


def _known(real: torch.Tensor, values: KnownValues) -> torch.Tensor:
    """A fake tensor (allocated under the tracker) whose real value the tracker knows."""
    fake = torch.empty(real.shape, dtype=real.dtype)
    values.remember(fake, real)
    return fake
