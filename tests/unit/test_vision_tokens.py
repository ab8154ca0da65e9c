"""models/vision.py: image → resized size → patch grid → LM tokens, against hand arithmetic and against
transformers' own Qwen2-VL image processor run on real PIL images (built locally, no hub)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from tunelab.errors import TunelabError
from tunelab.models.vision import VisionGeometry, budget_image, geometry_from_config, image_tokens, read_geometry

QWEN25 = VisionGeometry(model_type="qwen2_5_vl", patch_size=14, temporal_patch_size=2, merge_size=2,
                        min_pixels=3136, max_pixels=12845056)
QWEN3 = VisionGeometry(model_type="qwen3_vl", patch_size=16, temporal_patch_size=2, merge_size=2,
                       min_pixels=65536, max_pixels=16777216)


def test_within_bounds_rounds_each_side_to_the_factor():
    # Qwen2.5 (factor 28): 480/28 = 17.14 -> 17*28 = 476; 640/28 = 22.86 -> 23*28 = 644; grid 34 x 46.
    img = image_tokens(640, 480, QWEN25)
    assert (img.resized_width, img.resized_height) == (644, 476)
    assert img.grid_thw == (1, 34, 46)
    assert img.patches == 1564 and img.tokens == 391 and img.sequence_tokens == 393
    assert img.patch_dim == 3 * 2 * 14 * 14
    # Qwen3 (factor 32): 640 x 480 are multiples already; grid 30 x 40, 1200 patches, 300 tokens.
    img3 = image_tokens(640, 480, QWEN3)
    assert (img3.resized_width, img3.resized_height, img3.grid_thw, img3.tokens) == (640, 480, (1, 30, 40), 300)


def test_max_pixels_scales_down_and_min_pixels_scales_up():
    # 1920x1080 under 512*28*28 = 401408: beta = sqrt(2073600/401408) = 2.2728;
    # h = floor(1080/2.2728/28) * 28 = 16*28 = 448, w = floor(1920/2.2728/28) * 28 = 30*28 = 840.
    capped = image_tokens(1920, 1080, QWEN25.with_pixels(max_pixels=512 * 28 * 28))
    assert (capped.resized_width, capped.resized_height) == (840, 448)
    assert capped.tokens == (448 // 28) * (840 // 28) == 480
    # 100x50 under Qwen3's min 65536: beta = sqrt(65536/5000) = 3.6204;
    # h = ceil(50*3.6204/32) * 32 = 6*32 = 192, w = ceil(100*3.6204/32) * 32 = 12*32 = 384.
    small = image_tokens(100, 50, QWEN3)
    assert (small.resized_width, small.resized_height) == (384, 192)
    assert small.tokens == 6 * 12 == 72


def test_budget_image_is_the_square_of_max_pixels():
    # 1024*28*28 = 802816 = 896^2: 896/28 = 32 exactly, 32 x 32 merged tokens.
    img = budget_image(QWEN25.with_pixels(max_pixels=1024 * 28 * 28))
    assert (img.resized_width, img.resized_height, img.tokens) == (896, 896, 1024)


def test_pixel_bounds_are_checked():
    with pytest.raises(TunelabError, match="above max_pixels"):
        QWEN25.with_pixels(min_pixels=10_000, max_pixels=5_000)
    with pytest.raises(TunelabError, match="below one merged patch"):
        QWEN3.with_pixels(min_pixels=100, max_pixels=1000)
    with pytest.raises(TunelabError, match="aspect ratio"):
        image_tokens(2010, 10, QWEN25)


@pytest.mark.parametrize("geometry", [QWEN25.with_pixels(max_pixels=640 * 28 * 28), QWEN3], ids=["qwen2.5", "qwen3"])
@pytest.mark.parametrize("size", [(640, 480), (37, 300), (1000, 1000), (3000, 200), (60, 60)])
def test_matches_the_real_image_processor(geometry, size):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    proc = Qwen2VLImageProcessorPil(patch_size=geometry.patch_size, merge_size=geometry.merge_size,
                                    temporal_patch_size=geometry.temporal_patch_size,
                                    min_pixels=geometry.min_pixels, max_pixels=geometry.max_pixels)
    out = proc(images=[Image.new("RGB", size, (10, 200, 30))], return_tensors="pt")
    img = image_tokens(*size, geometry)
    assert tuple(out["image_grid_thw"][0].tolist()) == img.grid_thw
    assert tuple(out["pixel_values"].shape) == (img.patches, img.patch_dim)


def test_geometry_from_each_family_config():
    from transformers import Qwen2_5_VLConfig, Qwen3VLConfig

    g25 = geometry_from_config(Qwen2_5_VLConfig().to_dict())
    g3 = geometry_from_config(Qwen3VLConfig().to_dict())
    assert (g25.patch_size, g25.factor, g25.min_pixels, g25.max_pixels) == (14, 28, 3136, 12845056)
    assert (g3.patch_size, g3.factor, g3.min_pixels, g3.max_pixels) == (16, 32, 65536, 16777216)
    # A Qwen3-VL preprocessor states `size`; Qwen2.5-VL's states min/max_pixels. Both win over defaults.
    assert geometry_from_config(Qwen3VLConfig().to_dict(),
                                {"size": {"shortest_edge": 1024, "longest_edge": 200704}}).max_pixels == 200704
    assert geometry_from_config(Qwen2_5_VLConfig().to_dict(), {"min_pixels": 784, "max_pixels": 50176}).min_pixels == 784
    with pytest.raises(TunelabError, match="no vision_config"):
        geometry_from_config({"model_type": "llama"})


def test_read_geometry_from_a_model_dir(tmp_path):
    from transformers import Qwen3VLConfig

    (tmp_path / "config.json").write_text(json.dumps(Qwen3VLConfig().to_dict()))
    assert read_geometry(tmp_path).max_pixels == 16777216
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": {"shortest_edge": 4096,
                                                                            "longest_edge": 262144}}))
    assert (read_geometry(tmp_path).min_pixels, read_geometry(tmp_path).max_pixels) == (4096, 262144)
