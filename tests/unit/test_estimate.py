"""Estimators: architecture facts, memory in tokens per micro-batch, batch plans, dataset measurement."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from tunelab.catalog import architecture_from_config, resolve_architecture, resolve_gpu
from tunelab.cli import app
from tunelab.errors import TunelabError
from tunelab.estimate.batch import plan_batch
from tunelab.estimate.memory import MemoryInputs, estimate_memory, lora_params

runner = CliRunner()


def test_known_architectures_match_published_parameter_counts():
    # published sizes: Llama-3.2-1B 1.24 B, 3B 3.21 B, Llama-3.1-8B 8.03 B, Qwen2.5-0.5B 0.49 B, Mistral-7B 7.24 B
    for name, billions in [("Llama-3.2-1B-Instruct", 1.24), ("meta-llama/Llama-3.2-3B", 3.21), ("Llama-3.1-8B", 8.03),
                           ("Qwen2.5-0.5B", 0.49), ("Mistral-7B-Instruct-v0.3", 7.24)]:
        assert resolve_architecture(name).parameters / 1e9 == pytest.approx(billions, rel=0.01), name
    with pytest.raises(TunelabError, match="neither a model directory nor a known model"):
        resolve_architecture("GPT-9")


def test_architecture_from_local_config_matches_torch(tiny_model):
    from transformers import AutoModelForCausalLM

    arch = resolve_architecture(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert arch.parameters == sum(p.numel() for p in model.parameters())
    qwen = architecture_from_config({"model_type": "qwen2", "hidden_size": 896, "num_attention_heads": 14,
                                     "num_key_value_heads": 2, "num_hidden_layers": 24, "intermediate_size": 4864,
                                     "vocab_size": 151936, "tie_word_embeddings": True}, "q")
    assert qwen.head_dim == 64 and qwen.kv_heads == 2


def test_lora_param_count_matches_peft(tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainable, _ = model.get_nb_trainable_parameters()
    assert lora_params(resolve_architecture(tiny_model), 16, "all-linear") == trainable


def test_memory_grows_with_tokens_not_with_batch_label():
    arch = resolve_architecture("Llama-3.2-1B")
    inputs = MemoryInputs(lora_rank=64)
    unpacked = estimate_memory(arch, 16 * 40, inputs)  # 16 short examples padded to ~40 tokens
    packed = estimate_memory(arch, 16 * 2048, inputs)  # the same "batch 16", packed to 2048
    assert packed.peak_gib > 10 * unpacked.peak_gib
    assert packed.logits_gib > 0.4 * packed.activations_gib  # a 128k vocabulary: logits are a major term
    ckpt = estimate_memory(arch, 16 * 2048, MemoryInputs(lora_rank=64, activation_checkpointing=True))
    assert ckpt.activations_gib < packed.activations_gib / 5
    chunked = estimate_memory(arch, 16 * 2048, MemoryInputs(lora_rank=64, loss_chunks=8))
    assert chunked.logits_gib == pytest.approx(packed.logits_gib / 8)


def test_seed_oom_case_flagged_and_a_fitting_batch_recommended():
    arch = resolve_architecture("Llama-3.2-1B-Instruct")
    gpu = resolve_gpu("A100-80GB")
    inputs = MemoryInputs(lora_rank=64)
    assert estimate_memory(arch, 16 * 2048, inputs).peak_gib > gpu.memory_gib
    plan = plan_batch(arch, inputs, gpu.memory_gib, 2048, target_effective_examples=16, packed=True)
    assert 1 <= plan.recommended_batch_size <= plan.max_batch_size < 16
    assert estimate_memory(arch, plan.recommended_batch_size * 2048, inputs).peak_gib < 0.85 * gpu.memory_gib
    assert plan.recommended_batch_size * plan.recommended_gradient_accumulation_steps == 16  # effective batch kept


def test_estimate_cli_json_with_measured_dataset(tiny_model, caps_dataset):
    res = runner.invoke(app, ["estimate", "--model", str(tiny_model), "--gpu", "H100", "--max-seq-len", "128",
                              "--dataset", str(caps_dataset), "--prompt", "Capitalize: {input}", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    for key in ("peak_memory_gib", "max_batch_size", "recommended_batch_size",
                "recommended_gradient_accumulation_steps", "packing_density", "packing_efficiency",
                "tokens_per_epoch", "steps_per_epoch", "est_seconds_per_epoch", "est_source"):
        assert key in out, key
    assert out["packed"] is True  # 27-token examples vs 128: packing recommended
    assert out["packing_density"] == pytest.approx(128 // 27, abs=0.5)
    assert out["dataset"]["splits"]["test"]["examples"] == 40
    assert out["est_source"] == "model"


def test_packing_measurement_equals_what_training_packs(tiny_model, caps_dataset):
    """The planner's BFD simulation must give the trainer's own packing (same TRL code path)."""
    from tunelab.estimate.dataset import measure_dataset
    from tunelab.data.formatting import PromptFormat
    from tunelab.spec import DatasetSpec
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    m = measure_dataset(DatasetSpec(name="caps", path=str(caps_dataset)), tok, PromptFormat(), "Capitalize: {input}",
                        128, 2)
    # measured by test_train.py::test_packing_bfd_packs_and_learns for the same data and settings
    assert m["packing"]["examples"] == 320
    assert m["packing"]["sequences"] == -(-320 // (128 // 27))
    assert m["padding"]["nonpad_fraction"] == 1.0  # all 5-letter words: no padding at all


def _seed_run_yaml(tmp_path, **training):
    from tunelab.runconfig import RunConfig, save_run_config

    data = tmp_path / "d.json"
    data.write_text(json.dumps({s: [{"input": "a", "output": "A"}] for s in ("train", "validation", "test")}))
    cfg = RunConfig(name="1B_r64", kind="finetune", experiment="seed", experiment_dir=str(tmp_path),
                    model={"name": "llama1b", "path": "Llama-3.2-1B-Instruct"},
                    dataset={"name": "d", "path": str(data)}, prompt="{input}",
                    training={"lora_rank": 64, "max_seq_len": 2048, **training})
    return save_run_config(cfg)


def test_validate_flags_the_seed_oom_and_passes_the_fix(tmp_path):
    bad = _seed_run_yaml(tmp_path, batch_size=16, packing=True)
    res = runner.invoke(app, ["validate", str(bad), "--gpu", "A100-80GB"])
    assert res.exit_code == 1
    assert "exceeds the A100-80GB's 80 GiB" in res.stderr and "largest micro-batch that fits" in res.stderr
    good = _seed_run_yaml(tmp_path, batch_size=4, packing=True, gradient_accumulation_steps=4)
    res = runner.invoke(app, ["validate", str(good), "--gpu", "A100-80GB"])
    assert res.exit_code == 0, res.stderr


def test_validate_experiment_warns_on_waste_and_errors_on_warmup(write_spec):
    spec = write_spec(training={"warmup_steps": 10_000})
    res = runner.invoke(app, ["validate", str(spec), "--gpu", "H100"])
    assert res.exit_code == 1 and "warmup_steps 10000 exceeds the run's 40 optimizer steps" in res.stderr
    spec = write_spec(training={"max_seq_len": 512})
    res = runner.invoke(app, ["validate", str(spec), "--gpu", "H100", "--json"])
    assert res.exit_code == 0
    warnings = [w for c in json.loads(res.stdout) for w in c["warnings"]]
    assert any("packing is off" in w for w in warnings) and any("uses 1%" in w or "a micro-batch up to" in w for w in warnings)
    spec = write_spec(training={"max_seq_len": 20})
    res = runner.invoke(app, ["validate", str(spec), "--gpu", "H100"])
    # every example is 27 tokens (test_packing_measurement_equals_what_training_packs): all 320 are cut
    assert res.exit_code == 1 and "320 of 320 train examples are longer than max_seq_len 20" in res.stderr
    assert "longest: 27 tokens" in res.stderr
    spec = write_spec(prompt="no input here")
    res = runner.invoke(app, ["validate", str(spec), "--gpu", "H100"])
    assert res.exit_code == 1 and "prompt: must name at least one field" in res.stderr
    assert yaml.safe_load(spec.read_text())  # untouched
