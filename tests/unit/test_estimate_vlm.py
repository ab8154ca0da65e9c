"""estimate for vision-language models: the catalog's full-size configs against their published sizes, the
pixel budget's tokens by hand, and `tunelab estimate --images-per-example` on a tiny VLM directory."""

from __future__ import annotations

import json

import jsonschema
import pytest
from typer.testing import CliRunner

from tunelab.catalog import resolve_architecture
from tunelab.errors import TunelabError
from tunelab.estimate.image_tokens import image_plan


@pytest.mark.parametrize("name, published", [("Qwen/Qwen2.5-VL-7B-Instruct", 8_292_166_656),
                                             ("Qwen/Qwen3-VL-8B-Instruct", 8_767_123_696)])
def test_catalog_vlm_configs_build_the_published_parameter_count(name, published):
    """The model card's safetensors total (BF16 parameters) of each, against the model transformers builds
    from the transcribed config.json (vision tower, merger and language model)."""
    import torch
    from transformers import AutoModelForImageTextToText

    from tunelab.estimate.simulator.build import hf_config

    config = resolve_architecture(name).hf_config()
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(hf_config(config))
    assert sum(p.numel() for p in model.parameters()) == published


def test_pixel_budget_tokens_by_hand():
    # Qwen2.5-VL: 802816 = 896^2 px; 896 / 14 = 64 patches a side, 32 x 32 = 1024 merged tokens (+2 delimiters)
    q25 = image_plan("qwen2.5-vl-7b", resolve_architecture("qwen2.5-vl-7b").hf_config(), 2, None, 802816, 4096)
    assert q25.image.grid_thw == (1, 64, 64) and q25.image.tokens == 1024 and q25.tokens_per_example == 2052
    # Qwen3-VL: patch 16; 1024^2 px -> 64 x 64 patches -> 1024 tokens; its processor's default max is 4096^2
    q3 = image_plan("qwen3-vl-8b", resolve_architecture("qwen3-vl-8b").hf_config(), 1, None, 1024 * 1024, 2048)
    assert q3.image.grid_thw == (1, 64, 64) and q3.image.tokens == 1024
    with pytest.raises(TunelabError, match="truncation would cut image tokens"):
        image_plan("qwen3-vl-8b", resolve_architecture("qwen3-vl-8b").hf_config(), 2, None, 1024 * 1024, 2048)


def test_estimate_cli_with_images_on_a_tiny_vlm(tmp_path):
    from tests.unit.test_memsim_vlm import tiny_config
    from tunelab.cli.main import app

    (tmp_path / "config.json").write_text(json.dumps(tiny_config("qwen3_vl")))
    result = CliRunner().invoke(app, ["estimate", "--model", str(tmp_path), "--gpu-memory-gib", "0.5",
                                      "--max-seq-len", "300", "--batch-size", "2", "--images-per-example", "1",
                                      "--max-pixels", str(256 * 256), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    # 256x256 px at patch 16: 16 x 16 patches, 64 merged tokens, 66 with start/end
    assert out["images"]["image_grid_thw"] == [1, 16, 16] and out["images"]["image_tokens_per_example"] == 66
    assert out["memory_source"].startswith("simulated") and out["packed"] is False
    assert out["max_batch_size"] == 0 and out["fits"] is False  # 0.5 GiB: the CUDA context alone
    schema = json.loads(CliRunner().invoke(app, ["schema", "--output", "estimate"]).stdout)
    jsonschema.validate(out, schema)  # every key printed is declared there (the image ones too)
    assert schema["additionalProperties"] is False and "images" not in schema["required"]
    assert "tokens_per_epoch" not in out and "dataset" not in out  # no dataset: its epoch left out, not null


def test_plan_gives_a_vlm_row_one_image_that_fits_its_longest_row(tmp_path):
    """plan's memory (forecast/runs.py) runs the longest row with one image at the run's budget, or the largest
    that row can hold; a text model's inputs are untouched."""
    from tests.unit.test_memsim_vlm import tiny_config
    from tunelab.estimate.image_tokens import run_images
    from tunelab.estimate.memory import MemoryInputs

    config = tiny_config("qwen3_vl")
    (tmp_path / "config.json").write_text(json.dumps(config))
    base = MemoryInputs()
    budget = 512 * 512  # 32 x 32 patches of 16 px: 256 tokens
    assert run_images(base, tmp_path, config, None, budget, 1000).image_grid == (1, 32, 32)
    # a 100-token row holds 98 image tokens: 98 * 32^2 px, a 316 px square, resized to 288 (9 merged a side)
    small = run_images(base, tmp_path, config, None, budget, 100)
    assert small.images_per_example == 1 and small.image_grid == (1, 18, 18)
    assert run_images(base, tmp_path, config, None, budget, 50) == base  # below min_pixels' 64 tokens
    assert run_images(base, tmp_path, {"model_type": "llama"}, None, None, 1000) == base


@pytest.mark.slow
def test_full_size_qwen3_vl_8b_qlora_is_simulated():
    """Qwen3-VL-8B QLoRA, one 1024x1024 image (1024 tokens) in a 2048-token row: the simulator (not the analytic
    fallback) answers, and its frozen weights are what bitsandbytes' NF4 layout stores for these parameters:
    every Linear but the head at 4 bits + one uint8 absmax per 64 weights + one fp32 per 256 blocks, the rest
    (embeddings, head, norms, patch embedding, position table) in bf16 (cached; ~1-2 min on two cores)."""
    import torch
    from transformers import AutoModelForImageTextToText

    from tunelab.estimate.memory import MemoryInputs
    from tunelab.estimate.peak import SIMULATED, predict_peak, step_shape
    from tunelab.estimate.simulator.build import hf_config

    config = resolve_architecture("qwen3-vl-8b").hf_config()
    plan = image_plan("qwen3-vl-8b", config, 1, None, 1024 * 1024, 2048)
    inputs = plan.apply(MemoryInputs(quantize="4bit", lora_rank=16, activation_checkpointing=True))
    figure = predict_peak("qwen3-vl-8b", inputs, step_shape(1, 2048, False, None))
    assert figure.source == SIMULATED and figure.simulated is not None
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(hf_config(config))
    head = model.get_output_embeddings()
    linear = [m.weight.numel() for m in model.modules() if type(m) is torch.nn.Linear and m is not head]
    nf4 = sum(n / 2 + n / 64 + 4 * n / 64 / 256 for n in linear)
    other = sum(p.numel() for p in model.parameters()) - sum(linear)
    biases = sum(m.bias.numel() for m in model.modules() if type(m) is torch.nn.Linear and m.bias is not None)
    expected = nf4 + 2 * (other - biases)  # the NF4 stand-in drops Linear biases (vision tower: ~0.01 %)
    assert figure.simulated.weights == pytest.approx(expected, rel=0.005)
