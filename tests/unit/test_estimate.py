"""Estimators: architecture facts, memory in tokens per micro-batch, batch plans, dataset measurement."""

import json
from dataclasses import replace

import pytest
import yaml
from typer.testing import CliRunner

from tunelab.catalog import architecture_from_config, resolve_architecture, resolve_gpu
from tunelab.cli import app
from tunelab.errors import TunelabError
from tunelab.estimate.batch import largest_batch, plan_batch, tokens_per_microbatch
from tunelab.estimate.memory import MemoryInputs, estimate_memory, lora_params
from tunelab.estimate.peak import SIMULATED, predict_peak, step_shape

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


MEMORY_ARCHS = ["Llama-3.2-1B", "Qwen2.5-0.5B", "Mistral-7B"]
TOKENS = [0, 1, 64, 512, 4096, 32768]
VARIANTS = [MemoryInputs(), MemoryInputs(activation_checkpointing=True), MemoryInputs(loss_chunks=8),
            MemoryInputs(dtype="float32", lora_rank=64, modules_to_save=("lm_head",))]


@pytest.mark.parametrize("name", MEMORY_ARCHS)
def test_memory_peak_strictly_grows_with_tokens(name):
    arch = resolve_architecture(name)
    for inputs in VARIANTS:
        peaks = [estimate_memory(arch, t, inputs).peak_gib for t in TOKENS]
        assert all(a < b for a, b in zip(peaks, peaks[1:])), (inputs, peaks)


@pytest.mark.parametrize("name", MEMORY_ARCHS)
def test_packed_rows_never_allow_a_larger_batch_than_padded_short_rows(name):
    """At the same batch, packed rows hold max_seq_len tokens and padded rows the longest example's: so the
    packed peak is higher, and the largest batch that fits is smaller (the seed OOM: "16" packed is not "16")."""
    arch = resolve_architecture(name)
    inputs = MemoryInputs(lora_rank=16)
    for batch in (1, 4, 16):
        packed = estimate_memory(arch, tokens_per_microbatch(batch, 2048, True, 40), inputs).peak_gib
        padded = estimate_memory(arch, tokens_per_microbatch(batch, 2048, False, 40), inputs).peak_gib
        assert packed > padded


@pytest.mark.parametrize("name", MEMORY_ARCHS)
def test_activation_checkpointing_lowers_the_peak_and_nothing_else(name):
    arch = resolve_architecture(name)
    for tokens in TOKENS[1:]:
        plain = estimate_memory(arch, tokens, MemoryInputs())
        ckpt = estimate_memory(arch, tokens, MemoryInputs(activation_checkpointing=True))
        assert ckpt.peak_gib < plain.peak_gib
        assert (ckpt.weights_gib, ckpt.trainable_gib, ckpt.logits_gib) == (
            plain.weights_gib, plain.trainable_gib, plain.logits_gib)
    assert estimate_memory(arch, 0, MemoryInputs(activation_checkpointing=True)).peak_gib == pytest.approx(
        estimate_memory(arch, 0, MemoryInputs()).peak_gib)  # no tokens, nothing to recompute


@pytest.mark.parametrize("name", MEMORY_ARCHS)
def test_lora_rank_raises_trainable_memory_only(name):
    arch = resolve_architecture(name)
    runs = [estimate_memory(arch, 4096, MemoryInputs(lora_rank=r)) for r in (1, 4, 16, 64, 256)]
    assert all(a.trainable_gib < b.trainable_gib and a.peak_gib < b.peak_gib for a, b in zip(runs, runs[1:]))
    assert len({r.activations_gib for r in runs}) == 1 and len({r.weights_gib for r in runs}) == 1


def test_memory_terms_are_at_least_the_tensors_that_must_exist():
    """Independent lower bounds: the published parameter count in bf16 (1.24 B × 2 bytes), and the fp32
    logits of every token over the 128,256-token vocabulary, which the loss must hold at once."""
    arch = resolve_architecture("Llama-3.2-1B")
    est = estimate_memory(arch, 16 * 2048, MemoryInputs())
    assert est.weights_gib >= 1.23e9 * 2 / 2**30
    assert est.logits_gib >= 16 * 2048 * 128_256 * 4 / 2**30  # 15.7 GiB: bigger than the weights
    chunks = [estimate_memory(arch, 16 * 2048, MemoryInputs(loss_chunks=k)).logits_gib for k in (1, 2, 8, 64)]
    assert all(a > b for a, b in zip(chunks, chunks[1:]))  # chunking the loss lowers the logits term


def test_seed_oom_case_flagged_and_a_fitting_batch_recommended():
    arch = resolve_architecture("Llama-3.2-1B-Instruct")
    gpu = resolve_gpu("A100-80GB")
    inputs = MemoryInputs(lora_rank=64)
    assert estimate_memory(arch, 16 * 2048, inputs).peak_gib > gpu.memory_gib
    plan = plan_batch("Llama-3.2-1B-Instruct", inputs, gpu.memory_gib, 2048, target_effective_examples=16,
                      packed=True)
    assert 1 <= plan.recommended_batch_size <= plan.max_batch_size < 16
    assert plan.memory_source == SIMULATED
    # the recommendation as the plan runs it (with its accumulation: a second micro-batch meets the first's
    # gradients) fits by the simulator's own account, and is the peak the plan reports; one more row than the
    # maximum does not fit
    run = replace(inputs, gradient_accumulation_steps=plan.recommended_gradient_accumulation_steps)
    fitting = predict_peak("Llama-3.2-1B-Instruct", run, step_shape(plan.recommended_batch_size, 2048, True, None))
    assert fitting.required_gib == pytest.approx(plan.predicted_peak_gib, abs=1e-3)
    too_many = predict_peak("Llama-3.2-1B-Instruct", inputs, step_shape(plan.max_batch_size + 1, 2048, True, None))
    assert fitting.required_gib < 0.85 * gpu.memory_gib < too_many.required_gib
    assert plan.recommended_batch_size * plan.recommended_gradient_accumulation_steps == 16  # effective batch kept
    # packed rows hold max_seq_len tokens, padded rows the longest example's (40): padded allows far more
    assert largest_batch("Llama-3.2-1B-Instruct", inputs, 0.85 * gpu.memory_gib, 2048, False, 40) > plan.max_batch_size


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
    from transformers import AutoTokenizer

    from tunelab.data.formatting import PromptFormat
    from tunelab.estimate.dataset import measure_dataset
    from tunelab.spec import DatasetSpec

    tok = AutoTokenizer.from_pretrained(tiny_model)
    m = measure_dataset(DatasetSpec(name="caps", path=str(caps_dataset)), tok, PromptFormat(), "Capitalize: {input}",
                        128, 2)
    # measured by test_train.py::test_packing_bfd_packs_and_learns for the same data and settings
    assert m.packing.examples == 320
    assert m.packing.sequences == -(-320 // (128 // 27))
    assert m.padding.nonpad_fraction == 1.0  # all 5-letter words: no padding at all


def _seed_run_yaml(tmp_path, **training):
    from tunelab.rundir.config import RunConfig, save_run_config

    data = tmp_path / "d.json"
    data.write_text(json.dumps({s: [{"input": "a", "output": "A"}] for s in ("train", "validation", "test")}))
    cfg = RunConfig(name="1B_r64", kind="finetune", experiment="seed", experiment_dir=str(tmp_path),
                    model={"name": "llama1b", "path": "Llama-3.2-1B-Instruct"},
                    dataset={"name": "d", "path": str(data)}, prompt="{input}",
                    training={"lora_rank": 64, "max_seq_len": 2048, **training})
    return save_run_config(cfg)


def test_validate_flags_the_seed_oom_and_passes_the_fix(tmp_path):
    """The lab's OOM (packed 16 × 2048, r64, 1B) is the dense packed mask: with `attention: sdpa` validate
    flags it; tunelab's default (auto → varlen per example) trains the same batch within the GPU."""
    bad = _seed_run_yaml(tmp_path, batch_size=16, packing=True, attention="sdpa")
    res = runner.invoke(app, ["validate", str(bad), "--gpu", "A100-80GB"])
    assert res.exit_code == 1
    assert "exceeds the A100-80GB's" in res.stderr and "largest micro-batch that fits" in res.stderr
    good = _seed_run_yaml(tmp_path, batch_size=4, packing=True, gradient_accumulation_steps=4, attention="sdpa")
    res = runner.invoke(app, ["validate", str(good), "--gpu", "A100-80GB"])
    assert res.exit_code == 0, res.stderr
    default = _seed_run_yaml(tmp_path, batch_size=16, packing=True)
    res = runner.invoke(app, ["validate", str(default), "--gpu", "A100-80GB"])
    assert res.exit_code == 0, res.stderr


def test_validate_experiment_warns_on_waste_and_errors_on_warmup(write_spec):
    spec = write_spec(training={"warmup_steps": 10_000})
    res = runner.invoke(app, ["validate", str(spec), "--gpu", "H100"])
    assert res.exit_code == 1 and "warmup_steps 10000 exceeds the run's 40 optimizer steps" in res.stderr
    spec = write_spec(training={"max_seq_len": 512})
    res = runner.invoke(app, ["validate", str(spec), "--gpu", "H100", "--json"])
    assert res.exit_code == 0
    warnings = [w for c in json.loads(res.stdout)["checks"] for w in c["warnings"]]
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


@pytest.mark.parametrize("rows, b, g", [(320, 8, 1), (330, 8, 1), (330, 4, 2), (330, 2, 4), (7, 3, 2), (1, 8, 4)])
def test_optimizer_steps_counts_partial_windows_like_the_trainer(rows, b, g):
    """Walk the epoch micro-batch by micro-batch, stepping after every g-th and after the last one."""
    from tunelab.estimate.batch import optimizer_steps

    micro = [min(b, rows - i) for i in range(0, rows, b)]
    walked = sum(1 for k in range(len(micro)) if (k + 1) % g == 0 or k == len(micro) - 1)
    assert optimizer_steps(rows, b, g, epochs=3) == 3 * walked
    assert optimizer_steps(rows, b, g, epochs=3, max_steps=2) == min(2, 3 * walked)


def test_the_micro_batch_search_shards_as_the_peak_does():
    """Issue 38, as a new user met it: Llama-3.1-70B on 4 H100s, FSDP, activation checkpointing. Micro-batch 1's
    sharded peak fits (41.5 GiB), so the search for the largest micro-batch must shard too — it used to simulate
    one unsharded GPU (138 GiB) and answer 0. The answer is checked against the simulator run directly with the
    same 4 processes and FSDP: the recommendation (with its accumulation) and the maximum fit the planner's
    budget, one row more than the maximum does not."""
    from tunelab.estimate.peak import LIMIT_BATCH
    from tunelab.spec import Strategy, TrainingConfig

    res = runner.invoke(app, ["estimate", "--model", "Llama-3.1-70B", "--gpu", "H100-80GB", "--batch-size", "1",
                              "--max-seq-len", "2048", "--lora-rank", "16", "--gpus", "4", "--strategy", "fsdp",
                              "--activation-checkpointing", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["fits"] and out["processes"] == 4 and out["strategy"] == "fsdp"
    assert out["max_batch_size"] >= 1 and 1 <= out["recommended_batch_size"] <= out["max_batch_size"]
    assert "gpus_needed" not in out  # it fits its 4 GPUs

    model, budget = "Llama-3.1-70B", 0.85 * resolve_gpu("H100-80GB").memory_gib  # batch.SAFETY_FRACTION
    inputs = replace(MemoryInputs.of_training(TrainingConfig(lora_rank=16, gradient_checkpointing=True), "bfloat16"),
                     attention=out["attention"])

    def peak(b: int, accumulation: int = 1) -> float:
        return predict_peak(model, replace(inputs, gradient_accumulation_steps=accumulation),
                            step_shape(b, 2048, False, None), 4, Strategy.FSDP).required_gib

    assert peak(1) == pytest.approx(out["peak_memory_gib"], abs=1e-3)
    top = out["max_batch_size"]
    assert peak(top) <= budget and (top == LIMIT_BATCH or peak(top + 1) > budget)
    assert peak(out["recommended_batch_size"], out["recommended_gradient_accumulation_steps"]) <= budget
    # one process holding the whole model: not even micro-batch 1 fits (what the search used to simulate)
    assert largest_batch(model, inputs, budget, 2048, False, None) == 0
    # on one GPU, estimate says so and names the fewest GPUs whose sharded peak fits: 2 (one does not)
    res = runner.invoke(app, ["estimate", "--model", "Llama-3.1-70B", "--gpu", "H100-80GB", "--batch-size", "1",
                              "--max-seq-len", "2048", "--lora-rank", "16", "--activation-checkpointing",
                              "--node-gpus", "4", "--json"])
    need = json.loads(res.stdout)["gpus_needed"]
    two = predict_peak(model, inputs, step_shape(1, 2048, False, None), 2, Strategy.FSDP).required_gib
    one = predict_peak(model, inputs, step_shape(1, 2048, False, None)).required_gib
    assert one > resolve_gpu("H100-80GB").memory_gib >= two
    assert (need["gpus"], need["nodes"], need["node_gpus_source"]) == (2, 1, "--node-gpus")
    assert need["peak_memory_gib"] == round(two, 2) and need["fewer_peak_memory_gib"] == round(one, 2)
