"""A random build without weights (models/random_init.py, weights=False), whose weights the GPU kit's row
process draws on its device (`draw_random_model`), against the same build with its weights written: the same
tensors by name and shape, the same distribution, the parameter count the record gives."""

from __future__ import annotations

import json

import pytest

from tunelab.models.random_init import PROVENANCE_FILE, build_random_model, draw_random_model, drawn_at_load


def _config(tmp_path):
    """A small Llama (local config.json): 600 tokens, 2 layers, hidden 64, 2 key/value heads of 16."""
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
              "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "vocab_size": 600, "max_position_embeddings": 256, "bos_token_id": 1,
              "eos_token_id": 2, "tie_word_embeddings": False, "rms_norm_eps": 1e-05}
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path / "config.json"


def test_a_build_without_weights_is_drawn_where_it_is_used_like_the_written_one(tmp_path):
    import torch
    from safetensors.torch import load_file

    config = _config(tmp_path)
    drawn_dir = build_random_model(config, tmp_path / "drawn", dtype="bfloat16", weights=False).path
    written_dir = build_random_model(config, tmp_path / "written", dtype="bfloat16").path
    record = json.loads((drawn_dir / PROVENANCE_FILE).read_text())
    assert record["weights"] == "drawn at load" and record["files"] == []
    assert not list(drawn_dir.glob("*.safetensors")) and (drawn_dir / "tokenizer.json").is_file()
    assert drawn_at_load(drawn_dir) and not drawn_at_load(written_dir) and not drawn_at_load(tmp_path)

    model = draw_random_model(drawn_dir, "cpu", torch.bfloat16, attn_implementation="sdpa")
    drawn = dict(model.state_dict())
    written = load_file(written_dir / "model.safetensors")
    assert {k: v.shape for k, v in drawn.items()} == {k: v.shape for k, v in written.items()}
    assert all(v.dtype == torch.bfloat16 and v.device.type == "cpu" for v in drawn.values())
    # parameters: embed and head 2 × 600·64 = 76,800; each layer q 4,096 + k, v 2,048 each + o 4,096 + mlp
    # 3·64·128 = 24,576 + 2 norms 128 = 36,992, two of them; the final norm 64: 150,848
    assert record["parameters"] == model.num_parameters() == 150_848
    # the distribution models/weights.py writes: normal, std the config's initializer_range (0.02), norms at one
    w = drawn["model.layers.0.mlp.up_proj.weight"].float()
    assert w.std().item() == pytest.approx(0.02, rel=0.1) and abs(w.mean().item()) < 0.003
    assert torch.equal(drawn["model.norm.weight"], torch.ones(64, dtype=torch.bfloat16))
    assert model.config._attn_implementation == "sdpa"
