"""`tunelab models random`: real architectures with random weights. Parameter counts are checked three ways
(the published totals, the catalog's arithmetic, transformers' model and PEFT's LoRA count on `meta`), a
2-layer build is loaded back with transformers, and the bytes written depend on the seed alone."""

from __future__ import annotations

import hashlib
import json

import pytest
from typer.testing import CliRunner

from tunelab.catalog import KNOWN_MODELS, resolve_architecture
from tunelab.cli import app
from tunelab.errors import TunelabError
from tunelab.models.random_init import PROVENANCE_FILE, build_random_model, meta_model

runner = CliRunner()

# The parameter totals the hub shows for each base model (its safetensors, tied heads counted once).
PUBLISHED = {
    "Llama-3.2-1B": 1_235_814_400, "Llama-3.2-3B": 3_212_749_824, "Llama-3.1-8B": 8_030_261_248,
    "Llama-3.1-70B": 70_553_706_496, "Qwen2.5-0.5B": 494_032_768, "Qwen2.5-1.5B": 1_543_714_304,
    "Qwen2.5-3B": 3_085_938_688, "Qwen2.5-7B": 7_615_616_512, "Qwen3-0.6B": 596_049_920,
    "Qwen3-4B": 4_022_468_096, "Qwen3-8B": 8_190_735_360, "Mistral-7B": 7_248_023_552,
}


def test_every_catalog_model_has_a_published_count():
    from tunelab.models.vlm_architectures import VLM_CONFIGS  # their counts: test_models_random_vl.py

    assert sorted(a.name for a in KNOWN_MODELS.values()) == sorted([*PUBLISHED, *VLM_CONFIGS])


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_catalog_transformers_and_peft_agree_on_meta(name):
    from peft import LoraConfig, get_peft_model

    arch = resolve_architecture(name)
    model = meta_model(arch.hf_config())  # the whole model, every tensor on meta: no memory
    assert arch.parameters == PUBLISHED[name] == model.num_parameters()
    attn = model.model.layers[0].self_attn
    assert (attn.q_proj.out_features, attn.k_proj.out_features) == (arch.heads * arch.head_dim,
                                                                   arch.kv_heads * arch.head_dim)
    assert len(model.model.layers) == arch.layers and model.config.hidden_size == arch.hidden

    # PEFT on a 2-layer copy (wrapping the 560 linears of the 70B takes half a minute); layers are identical
    r, layers = 8, 2
    h, q, kv, i = arch.hidden, arch.heads * arch.head_dim, arch.kv_heads * arch.head_dim, arch.intermediate
    # LoRA adds r × (in + out) per linear: q, k, v, o, gate, up, down in each layer
    by_hand = layers * r * ((h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h))
    shallow = meta_model({**arch.hf_config(), "num_hidden_layers": layers})
    peft_model = get_peft_model(shallow, LoraConfig(r=r, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainable, total = peft_model.get_nb_trainable_parameters()
    assert trainable == by_hand
    assert total == PUBLISHED[name] - (arch.layers - layers) * arch.params_per_layer + by_hand


@pytest.mark.parametrize("name, bos, eos, rope", [
    ("Qwen2.5-0.5B", 151643, 151643, {"rope_type": "default", "rope_theta": 1000000.0}),
    ("Llama-3.2-1B", 128000, 128001, {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                      "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                      "original_max_position_embeddings": 8192}),
])
def test_two_layer_copy_loads_with_the_real_shapes(tmp_path, name, bos, eos, rope):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    arch = resolve_architecture(name)
    out = build_random_model(name, tmp_path / "m", layers=2, seed=3).path
    model, info = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]  # every tensor written, none extra
    tokenizer = AutoTokenizer.from_pretrained(out)

    assert len(tokenizer) == model.config.vocab_size == model.get_input_embeddings().num_embeddings == arch.vocab
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (bos, eos)
    attn = model.model.layers[0].self_attn
    assert len(model.model.layers) == 2 and model.config.hidden_size == arch.hidden
    assert attn.q_proj.out_features == arch.heads * arch.head_dim and attn.head_dim == arch.head_dim
    assert attn.k_proj.out_features == arch.kv_heads * arch.head_dim
    assert (attn.q_proj.bias is not None) == (arch.family == "qwen2")
    assert model.config.rope_parameters == rope
    assert model.num_parameters() == arch.parameters - (arch.layers - 2) * arch.params_per_layer

    written = json.loads((out / "config.json").read_text())
    assert written.pop("num_hidden_layers") == 2 and written.pop("torch_dtype") == "bfloat16"
    real = arch.hf_config()
    real.pop("num_hidden_layers")
    assert written == real

    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                         return_dict=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**chat).logits
    assert logits.shape == (1, chat["input_ids"].shape[1], arch.vocab) and torch.isfinite(logits).all()

    record = json.loads((out / PROVENANCE_FILE).read_text())
    assert {k: record[k] for k in ("arch", "origin", "layers", "real_layers", "seed", "dtype")} == {
        "arch": name, "origin": "catalog", "layers": 2, "real_layers": arch.layers, "seed": 3, "dtype": "bfloat16"}
    assert record["parameters"] == model.num_parameters()


def small_config(tmp_path, layers=2):
    """A small Llama config.json of one's own (the local-config path): 600 tokens, 2 layers."""
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
              "intermediate_size": 128, "num_hidden_layers": layers, "num_attention_heads": 4,
              "num_key_value_heads": 2, "vocab_size": 600, "max_position_embeddings": 256, "bos_token_id": 1,
              "eos_token_id": [2, 3], "tie_word_embeddings": False, "rms_norm_eps": 1e-05}
    d = tmp_path / "src"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config))
    return d, config


def weight_hashes(path):
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.glob("*.safetensors"))}


def tensors(path):
    from safetensors.torch import load_file

    return {k: v for f in sorted(path.glob("*.safetensors")) for k, v in load_file(f).items()}


def test_the_seed_alone_decides_the_weights(tmp_path):
    import torch

    src, _ = small_config(tmp_path)
    one = build_random_model(src, tmp_path / "a", seed=7, dtype="float32").path
    two = build_random_model(src / "config.json", tmp_path / "b", seed=7, dtype="float32").path
    other = build_random_model(src, tmp_path / "c", seed=8, dtype="float32").path
    assert weight_hashes(one) == weight_hashes(two) and weight_hashes(one) != weight_hashes(other)

    # the same tensors, whatever the sharding; a 1-layer copy is the first layer of the 2-layer one
    sharded = build_random_model(src, tmp_path / "d", seed=7, dtype="float32", shard_bytes=100_000).path
    assert len(list(sharded.glob("*.safetensors"))) > 2 and (sharded / "model.safetensors.index.json").is_file()
    full, split = tensors(one), tensors(sharded)
    assert full.keys() == split.keys() and all(torch.equal(full[k], split[k]) for k in full)
    shallow = tensors(build_random_model(src, tmp_path / "e", layers=1, seed=7, dtype="float32").path)
    assert shallow.keys() < full.keys() and all(torch.equal(shallow[k], full[k]) for k in shallow)

    w = full["model.layers.0.mlp.up_proj.weight"]
    assert w.std().item() == pytest.approx(0.02, rel=0.05) and abs(w.mean().item()) < 0.002
    assert torch.equal(full["model.norm.weight"], torch.ones(64))


def test_a_local_config_is_copied_and_sharded_output_loads(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, config = small_config(tmp_path)
    out = build_random_model(src, tmp_path / "m", dtype="float16", shard_bytes=100_000).path
    written = json.loads((out / "config.json").read_text())
    assert written == {**config, "torch_dtype": "float16"}
    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and model.dtype == torch.float16
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert len(tokenizer) == 600 and tokenizer.eos_token_id == 2 and tokenizer.bos_token_id == 1
    assert json.loads((out / PROVENANCE_FILE).read_text())["origin"] == hashlib.sha256(
        (src / "config.json").read_bytes()).hexdigest()


def test_errors_name_what_is_wrong(tmp_path):
    src, _ = small_config(tmp_path)
    with pytest.raises(TunelabError, match="Llama-3.2-1B.*Qwen2.5-7B.*Mistral-7B") as unknown:
        build_random_model("GPT-9", tmp_path / "x")
    assert unknown.value.field == "--arch"
    (tmp_path / "empty").mkdir()
    with pytest.raises(TunelabError, match="no config.json"):
        build_random_model(tmp_path / "empty", tmp_path / "x")
    for bad in (0, 3):
        with pytest.raises(TunelabError, match="between 1 and 2") as layers:
            build_random_model(src, tmp_path / "x", layers=bad)
        assert layers.value.field == "--layers"
    with pytest.raises(TunelabError, match="unknown dtype"):
        build_random_model(src, tmp_path / "x", dtype="int8")
    assert not (tmp_path / "x").exists()

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(TunelabError, match="not empty"):
        build_random_model(src, taken)
    assert (taken / "notes.txt").read_text() == "mine"
    build_random_model(src, taken, force=True)
    assert not (taken / "notes.txt").exists() and (taken / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no build or old dir left behind


def test_cli_builds_and_reports(tmp_path):
    src, _ = small_config(tmp_path)
    res = runner.invoke(app, ["models", "random", "--arch", str(src), "--out", str(tmp_path / "m"), "--layers", "1"])
    assert res.exit_code == 0, res.output
    assert "1 of 2 layers" in res.output and (tmp_path / "m" / "tokenizer.json").is_file()
    bad = runner.invoke(app, ["models", "random", "--arch", "GPT-9", "--out", str(tmp_path / "n")])
    assert bad.exit_code == 1 and "known model" in bad.output
