"""The GPU job of the peers' training comparison (benchmarks/peerlib, run by benchmarks/gpu_truth.py --peers on a
lent GPU): what each tool is told to run, checked here without a GPU against the model's own facts — the catalog's
Llama-3.2-1B config.json as transformers saves it —, and the passages both tools train on."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from peerlib import torchtune, tunelab_side  # noqa: E402
from peerlib.job import GPU_JOB, PASSAGE_CHARS, Inputs, Job, passages  # noqa: E402
from peerlib.measure import thread_env  # noqa: E402


@pytest.fixture
def llama_dir(tmp_path: Path) -> Path:
    """Llama-3.2-1B's config.json as transformers writes it (rope_parameters), beside two weight shards' names."""
    from transformers import LlamaConfig

    from tunelab.catalog import resolve_architecture

    LlamaConfig(**resolve_architecture("Llama-3.2-1B").hf_config()).save_pretrained(tmp_path / "m")
    for shard in ("model-00002-of-00002.safetensors", "model-00001-of-00002.safetensors"):
        (tmp_path / "m" / shard).write_bytes(b"")
    return tmp_path / "m"


def test_torchtune_runs_the_gpu_job_in_bf16_on_cuda_with_llama3_rope(llama_dir, tmp_path):
    inputs = Inputs(model="llama-3.2-1b", model_dir=llama_dir, data_dir=tmp_path)
    cfg = torchtune.config(inputs, GPU_JOB, tmp_path / "out")
    assert (cfg["device"], cfg["dtype"]) == ("cuda", "bf16")
    model = cfg["model"]
    # Llama-3.2-1B: 16 layers of 2048, 32 heads over 8 KV heads, tied embeddings, RoPE base 500k scaled by 32
    assert (model["num_layers"], model["embed_dim"], model["num_heads"], model["num_kv_heads"]) == (16, 2048, 32, 8)
    assert model["scale_factor"] == 32 and model["rope_base"] == 500_000.0 and model["tie_word_embeddings"] is True
    assert (model["lora_rank"], model["lora_alpha"], model["lora_attn_modules"]) == (16, 32, ["q_proj", "v_proj"])
    assert cfg["checkpointer"]["checkpoint_files"] == ["model-00001-of-00002.safetensors",
                                                       "model-00002-of-00002.safetensors"]
    assert cfg["tokenizer"]["max_seq_len"] == 512 and cfg["batch_size"] == 8
    assert torchtune.config(inputs, Job(), tmp_path / "cpu")["dtype"] == "fp32"  # the CPU job as before


def test_torchtune_refuses_a_rope_it_cannot_map(llama_dir, tmp_path):
    import json

    path = llama_dir / "config.json"
    cfg = json.loads(path.read_text())
    cfg["rope_parameters"] = {**cfg["rope_parameters"], "rope_type": "yarn"}
    path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="only plain RoPE and Llama 3's scaling"):
        torchtune.model_args(llama_dir, GPU_JOB)
    with pytest.raises(ValueError, match="this mapping covers"):
        torchtune.config(Inputs("x", llama_dir, tmp_path), replace(GPU_JOB, dtype="float16"), tmp_path)


def test_tunelab_trains_the_gpu_job_on_one_gpu_in_bf16(tmp_path):
    spec = tunelab_side.spec(Inputs(model="llama-3.2-1b", model_dir=tmp_path, data_dir=tmp_path), GPU_JOB)
    assert spec["resources"]["gpus_per_run"] == 1 and spec["training"]["dtype"] == "bfloat16"
    assert spec["training"]["max_seq_len"] == 512
    cpu = tunelab_side.spec(Inputs(model="tiny", model_dir=tmp_path, data_dir=tmp_path), Job())
    assert cpu["resources"]["gpus_per_run"] == 0 and cpu["training"]["dtype"] == "float32"


def test_passages_are_seeded_and_their_answers_capitalize_every_word():
    words = ["apple", "brick", "cloud", "dunes", "eagle"]
    rows = passages(words, 20, seed=3)
    assert rows == passages(words, 20, seed=3) and rows != passages(words, 20, seed=4)
    for row in rows:
        picked = row["input"].split(" ")
        assert set(picked) <= set(words) and row["output"].split(" ") == [w.capitalize() for w in picked]
        assert PASSAGE_CHARS <= len(row["input"]) + 1 < PASSAGE_CHARS + 6  # stops at the first word past the length


def test_only_the_gpu_job_sees_the_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert thread_env(2)["CUDA_VISIBLE_DEVICES"] == ""
    assert thread_env(2, gpu=True)["CUDA_VISIBLE_DEVICES"] == "0"


def test_the_gpu_table_and_lines_carry_the_gpu_memory_and_the_cpu_table_does_not():
    from peerlib.result import TrainResult
    from peerlib.summary import ratio_lines, table

    def row(tool: str, repeat: int, tps: float, gpu: float | None) -> TrainResult:
        return TrainResult(tool=tool, version="v", model="m", repeat=repeat, wall_s=30.0, first_step_s=9.0,
                           tokens_per_s=tps, peak_pss_mib=900.0, training_pss_mib=800.0, final_loss=1.0,
                           steps=100, peak_gpu_mib=gpu)

    rows = [row("tunelab", 0, 30_000, 12_000), row("torchtune", 0, 25_000, 15_000),
            row("tunelab", 1, 32_000, 12_400), row("torchtune", 1, 27_000, 15_000)]
    lines = ratio_lines(rows)
    assert f"training (m): tunelab ÷ torchtune = {31_000 / 26_000:.2f}x (tokens/s, median of 2)" in lines
    assert f"  peak GPU memory used (m): torchtune ÷ tunelab = {15_000 / 12_200:.2f}x (above 1: tunelab lower)" in lines
    gpu_table = table(rows, {}).splitlines()
    assert gpu_table[0].endswith("| peak GPU MiB (NVML) |") and gpu_table[-1].endswith("| 12200 (12000–12400) |")
    cpu_table = table([row("tunelab", 0, 30_000, None)], {}).splitlines()
    assert cpu_table[0].endswith("| exact match |") and cpu_table[2].count("|") == 13  # 12 columns


def test_the_gpu_models_rows_are_passages_split_as_the_demo_splits(tmp_path, tiny_model):
    """prepare() for a GPU model on a directory it is given (gpu_truth's cache; here the tiny model, whose
    byte-level tokenizer the random models share): 80 % / 10 % / 10 % passages, the same rows every time, in the
    chat shape every tool reads."""
    from peerlib.job import PROMPT, SYSTEM, prepare

    inputs = prepare(tmp_path, "llama-3.2-1b", words=50, model_dir=tiny_model)
    assert inputs.model_dir == tiny_model and inputs.splits == {"train": 40, "validation": 5, "test": 5}
    rows = inputs.rows("train")
    first = rows[0]["messages"]
    assert [m["role"] for m in first] == ["system", "user", "assistant"] and first[0]["content"] == SYSTEM
    passage = first[1]["content"].removeprefix(PROMPT.format(input=""))
    assert len(passage) >= PASSAGE_CHARS and first[2]["content"] == " ".join(w.capitalize() for w in passage.split())
    assert prepare(tmp_path / "again", "llama-3.2-1b", words=50, model_dir=tiny_model).rows("train") == rows


def test_peer_interpreters_are_named_name_equals_path():
    from peerlib.registry import peer_pythons

    assert peer_pythons(["torchtune=/tmp/peer-torchtune/bin/python", "oumi=/a=b/python"]) == {
        "torchtune": Path("/tmp/peer-torchtune/bin/python"), "oumi": Path("/a=b/python")}
    with pytest.raises(ValueError, match="NAME=PYTHON"):
        peer_pythons(["torchtune"])
