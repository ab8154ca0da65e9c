"""The memory simulator on vision-language models (tiny Qwen2.5-VL and Qwen3-VL configs built here, no files):
what images add to the simulated step, against arithmetic on the processor's tensors."""

from __future__ import annotations

import pytest

from tunelab.errors import TunelabError
from tunelab.estimate.simulator import StepConfig, StepShape, simulate

GRID = (1, 16, 16)  # one 224x224 (Qwen2.5) / 256x256 (Qwen3) image: 256 patches, 64 merged tokens
TOKENS = 16 * 16 // 4 + 2  # with <|vision_start|> and <|vision_end|>
IDS = dict(image_token_id=900, video_token_id=901, vision_start_token_id=902, vision_end_token_id=903,
           bos_token_id=1, eos_token_id=2)


def tiny_config(family: str) -> dict:
    from transformers import Qwen2_5_VLConfig, Qwen3VLConfig

    text = dict(vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=4, head_dim=32,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]})
    vision = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, spatial_merge_size=2,
                  temporal_patch_size=2, out_hidden_size=128)
    if family == "qwen2_5_vl":
        vision.update(patch_size=14, window_size=112, fullatt_block_indexes=[1])
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **IDS).to_dict()
    vision.update(patch_size=16, num_position_embeddings=64, deepstack_visual_indexes=[0])
    return Qwen3VLConfig(text_config=text, vision_config=vision, **IDS).to_dict()


def pixel_bytes(family: str) -> int:
    """One image's pixel_values: 256 patches x (3 channels x 2 frames x patch^2) fp32 values."""
    patch = 14 if family == "qwen2_5_vl" else 16
    return 256 * 3 * 2 * patch * patch * 4


def peak(family: str, images: int, seq_len: int, rows: int = 2, **config) -> int:
    shape = StepShape(rows, seq_len, images_per_row=images, image_grid=GRID)
    return simulate(tiny_config(family), StepConfig(**config), shape).peak_allocated


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_a_frozen_tower_leaves_only_its_input_at_the_peak(family):
    """LoRA on the language model: the tower saves nothing for backward, so at the peak (the LM's backward) one
    more image per row at the same sequence length adds exactly its pixel_values (fp32, as the processor
    returns them) for each row, plus Qwen2.5-VL's window order (one int64 per merged token: 64 x 8 bytes)."""
    extra = peak(family, 2, 400) - peak(family, 1, 400)
    window = 64 * 8 if family == "qwen2_5_vl" else 0
    assert extra == 2 * (pixel_bytes(family) + window)


def test_image_tokens_cost_the_language_model_what_text_tokens_cost():
    """A second image grows each row by 66 tokens: the step grows by the pixels plus exactly what 66 more
    text tokens per row cost the LM (measured on the same model with one image)."""
    grown = peak("qwen3_vl", 2, 300 + TOKENS) - peak("qwen3_vl", 1, 300)
    text = peak("qwen3_vl", 1, 300 + TOKENS) - peak("qwen3_vl", 1, 300)
    assert text > 0
    assert grown == 2 * pixel_bytes("qwen3_vl") + text


def test_lora_on_the_vision_tower_keeps_its_activations():
    lm_only = simulate(tiny_config("qwen2_5_vl"), StepConfig(lora_targets=("q_proj", "v_proj")),
                       StepShape(2, 400, images_per_row=1, image_grid=GRID))
    tower = simulate(tiny_config("qwen2_5_vl"), StepConfig(lora_targets=("q_proj", "v_proj", "qkv")),
                     StepShape(2, 400, images_per_row=1, image_grid=GRID))
    # the tower's qkv adapters: 2 blocks x (8 x 64 in + 192 x 8 out) parameters
    assert tower.trainable_params - lm_only.trainable_params == 2 * (8 * 64 + 192 * 8)
    assert tower.activations > lm_only.activations


def test_qlora_vlm_and_refusals():
    sim = simulate(tiny_config("qwen3_vl"), StepConfig(quantize="4bit"),
                   StepShape(2, 300, images_per_row=1, image_grid=GRID))
    full = simulate(tiny_config("qwen3_vl"), StepConfig(), StepShape(2, 300, images_per_row=1, image_grid=GRID))
    assert sim.weights < full.weights
    with pytest.raises(TunelabError, match="truncation would cut image tokens"):
        peak("qwen3_vl", 5, 300)
    with pytest.raises(TunelabError, match="packed rows with images"):
        simulate(tiny_config("qwen3_vl"), StepConfig(), StepShape(2, 300, packed=True, images_per_row=1,
                                                                  image_grid=GRID))
