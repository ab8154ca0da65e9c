"""A `tunelab models random` directory is a model tunelab plans, estimates and trains: real optimizer steps of
the run's own trainer (`tunelab probe`) on a shallow random Qwen2-type model built from a config.json, whose
tokenizer transformers reloads as Qwen2Tokenizer (the path the catalog's Qwen2.5 copies take)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tunelab.cli import app

pytestmark = pytest.mark.slow
runner = CliRunner()


def test_a_random_model_plans_estimates_and_trains(tmp_path, spec_in, monkeypatch):
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))
    config = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 64,
              "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
              "vocab_size": 1000, "max_position_embeddings": 512, "bos_token_id": 990, "eos_token_id": 990,
              "tie_word_embeddings": True, "rope_theta": 1000000.0, "rms_norm_eps": 1e-06, "use_sliding_window": False}
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = tmp_path / "model"
    built = runner.invoke(app, ["models", "random", "--arch", str(tmp_path / "config.json"), "--out", str(model),
                                "--layers", "2", "--seed", "1"])
    assert built.exit_code == 0, built.output
    assert "2 of 4 layers" in built.output

    est = runner.invoke(app, ["estimate", "--model", str(model), "--gpu", "H100", "--max-seq-len", "64", "--json"])
    assert est.exit_code == 0, est.output
    figure = json.loads(est.stdout)
    assert figure["memory_source"].startswith("simulated") and figure["dtype"] == "bfloat16"
    # what must fit is the reserved peak plus the CUDA context, and the step holds at least the bf16 weights
    assert figure["peak_memory_gib"] == pytest.approx(figure["peak_reserved_gib"] + figure["cuda_context_gib"],
                                                      abs=2e-3)
    assert figure["peak_allocated_gib"] * 2**30 >= 2 * figure["parameters"]

    spec = spec_in(tmp_path / "exp", models=[{"name": "rand", "path": str(model)}], factors={"lora_rank": [4]})
    probed = runner.invoke(app, ["probe", str(spec)])
    assert probed.exit_code == 0, probed.output
    assert "tokens/s on cpu" in probed.output
    rows = json.loads(runner.invoke(app, ["history", "--json"]).stdout)["rows"]
    assert len(rows) == 1 and rows[0]["kind"] == "probed" and rows[0]["tokens_per_s"] > 0
