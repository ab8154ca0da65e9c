"""`tunelab models random` for Qwen2.5-VL-7B and Qwen3-VL-8B. The catalog configs build the published parameter
totals; a 2-layer copy's tensors are the names and shapes transformers' own model of the written config has
(on `meta`); and a narrow build from a local config.json of the real family (full vocabulary, so the special
tokens sit at their real ids) is written, loaded back with tunelab's VLM loader, and read by models/vision.py.
(A 2-layer build of the real widths writes 3.3 GB: about 20 s, too slow for the unit tests.)"""

from __future__ import annotations

import copy
import json

import pytest

from tunelab.models.random_init import PROVENANCE_FILE, build_random_model, meta_model, resolve_source
from tunelab.models.random_vl import shallow_vlm_config
from tunelab.models.vision import read_geometry
from tunelab.models.vlm import load_vision_processor, load_vlm
from tunelab.models.vlm_architectures import VLM_CONFIGS
from tunelab.models.weights import tensor_plans

# The totals the hub shows for Qwen/Qwen2.5-VL-7B-Instruct and Qwen/Qwen3-VL-8B-Instruct (safetensors).
PUBLISHED = {"Qwen2.5-VL-7B": 8_292_166_656, "Qwen3-VL-8B": 8_767_123_696}
# Qwen's tokenizer.json: <|im_start|>, <|im_end|>, <|vision_start|>, <|image_pad|>
QWEN_IDS = {"<|im_start|>": 151644, "<|im_end|>": 151645, "<|vision_start|>": 151652, "<|image_pad|>": 151655}


def test_every_vlm_has_a_published_count():
    assert sorted(PUBLISHED) == sorted(VLM_CONFIGS)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_two_layer_config_has_transformers_shapes(name):
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    source = resolve_source(name.lower() + "-instruct")  # the catalog name, as users spell the hub's
    assert source.name == name and meta_model(source.config).num_parameters() == PUBLISHED[name]
    config = shallow_vlm_config(source.config, 2, "bfloat16")
    assert config["text_config"]["num_hidden_layers"] == 2 and config["vision_config"]["depth"] == 2

    plans = {p.name: p.shape for p in tensor_plans(meta_model(config))}
    kwargs = {k: v for k, v in copy.deepcopy(VLM_CONFIGS[name]).items() if k not in ("model_type", "architectures")}
    kwargs["text_config"]["num_hidden_layers"] = 2
    kwargs["vision_config"]["depth"] = 2
    for key in ("fullatt_block_indexes", "deepstack_visual_indexes"):  # block indices past the copy's 2 dropped
        if key in kwargs["vision_config"]:
            kwargs["vision_config"][key] = [i for i in kwargs["vision_config"][key] if i < 2]
    with torch.device("meta"):
        ref = AutoModelForImageTextToText.from_config(AutoConfig.for_model(source.config["model_type"], **kwargs))
    expected = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert plans == expected  # untied lm_head: every tensor is stored
    text = source.config["text_config"]
    assert plans["lm_head.weight"] == (text["vocab_size"], text["hidden_size"])


def _narrow(name: str) -> dict:
    """The real family's config, narrow: 2 heads of 128 (the real M-RoPE sections), a 64-wide vision tower."""
    config = copy.deepcopy(VLM_CONFIGS[name])
    config["text_config"].update(hidden_size=256, intermediate_size=512, num_hidden_layers=3,
                                 num_attention_heads=2, num_key_value_heads=1, head_dim=128)
    config["vision_config"].update(depth=3, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=256)
    return config


@pytest.mark.parametrize("name, patch, pixels", [("Qwen2.5-VL-7B", 14, (3136, 12845056)),
                                                 ("Qwen3-VL-8B", 16, (65536, 16777216))])
def test_narrow_build_loads_with_the_vlm_loader(tmp_path, name, patch, pixels):
    import torch

    (tmp_path / "config.json").write_text(json.dumps(_narrow(name)))
    out = build_random_model(tmp_path / "config.json", tmp_path / "m", layers=2, seed=5).path
    provenance = json.loads((out / PROVENANCE_FILE).read_text())
    assert (provenance["layers"], provenance["real_layers"]) == (2, 3)

    model, info = load_vlm(out, torch.bfloat16, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]  # every tensor written, none extra
    assert len(model.model.language_model.layers) == 2 and len(model.model.visual.blocks) == 2
    assert provenance["parameters"] == model.num_parameters()

    processor = load_vision_processor(out)
    tok = processor.tokenizer
    assert {t: tok.convert_tokens_to_ids(t) for t in QWEN_IDS} == QWEN_IDS
    assert processor.image_token_id == QWEN_IDS["<|image_pad|>"] == model.config.image_token_id
    assert len(tok) == model.get_input_embeddings().num_embeddings == _narrow(name)["text_config"]["vocab_size"]
    rendered = tok.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                        "text": "colour?"}]}], tokenize=False, add_generation_prompt=True)
    assert "<|vision_start|><|image_pad|><|vision_end|>colour?<|im_end|>" in rendered
    assert rendered.endswith("<|im_start|>assistant\n")

    geometry = read_geometry(out)
    assert (geometry.patch_size, geometry.merge_size, geometry.temporal_patch_size) == (patch, 2, 2)
    assert (geometry.min_pixels, geometry.max_pixels) == pixels
    saved = json.loads((out / "preprocessor_config.json").read_text())  # the published normalisation
    clip = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    assert (saved["image_mean"], saved["image_std"]) == (clip if patch == 14 else ([0.5] * 3, [0.5] * 3))

    # an image of 4×2 merge cells (factor = patch·2) within the bounds stays that size: 8×4 patches, one frame
    from PIL import Image

    factor = 2 * patch
    narrow = load_vision_processor(out, min_pixels=factor**2, max_pixels=64 * factor**2).image_processor
    grid = narrow(images=[Image.new("RGB", (4 * factor, 2 * factor), "red")], return_tensors="pt")["image_grid_thw"]
    assert grid.tolist() == [[1, 4, 8]]

    # the copy runs: one image's 8 tokens through the tower, the merger and the language model
    ids = tok.apply_chat_template([{"role": "user", "content": [{"type": "image"}]}], add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    pad = QWEN_IDS["<|image_pad|>"]
    ids = [t for i in ids for t in ([pad] * 8 if i == pad else [i])]
    batch = narrow(images=[Image.new("RGB", (4 * factor, 2 * factor), "red")], return_tensors="pt")
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), mm_token_type_ids=torch.tensor([[int(i == pad) for i in ids]]),
                       pixel_values=batch["pixel_values"].to(torch.bfloat16),
                       image_grid_thw=batch["image_grid_thw"]).logits
    assert tuple(logits.shape) == (1, len(ids), len(tok)) and torch.isfinite(logits.float()).all()
