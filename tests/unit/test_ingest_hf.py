"""HF Trainer output dirs (TRL, axolotl, LLaMA-Factory) and torchtune logs in `tunelab history`: final loss,
steps, speed and the fields their source lacked; the training peak, never the weights-only figure printed
after model init; bad dirs named with their reason while the rest is imported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunelab.cli import app

LOGS = Path(__file__).parent.parent / "fixtures" / "logs"
runner = CliRunner()


def trl_dir(root: Path, steps: int = 20, with_results: bool = True) -> Path:
    """A run dir as TRL's SFTTrainer + PEFT leave it (LLaMA-Factory adds all_results.json): checkpoints with
    trainer_state.json and adapter_config.json."""
    ckpt = root / f"checkpoint-{steps}"
    ckpt.mkdir(parents=True)
    logs = [{"entropy": 1.2, "epoch": 0.5 * (i + 1) / (steps // 10), "grad_norm": 0.8, "learning_rate": 2e-4,
             "loss": round(2.0 - 0.1 * i, 4), "mean_token_accuracy": 0.5, "num_tokens": 4096.0 * (i + 1) * 10,
             "step": 10 * (i + 1)} for i in range(steps // 10)]
    logs.append({"epoch": 1.0, "eval_loss": 1.75, "eval_runtime": 3.1, "step": steps})
    logs.append({"epoch": 1.0, "step": steps, "total_flos": 1.0e15, "train_loss": 1.95, "train_runtime": 40.0,
                 "train_samples_per_second": 8.0, "train_steps_per_second": 0.5})
    (ckpt / "trainer_state.json").write_text(json.dumps({
        "best_metric": None, "epoch": 1.0, "global_step": steps, "log_history": logs, "logging_steps": 10,
        "max_steps": steps, "num_train_epochs": 1, "train_batch_size": 4}))
    (ckpt / "adapter_config.json").write_text(json.dumps({
        "base_model_name_or_path": "meta-llama/Llama-3.2-1B-Instruct", "peft_type": "LORA", "r": 16,
        "lora_alpha": 32, "target_modules": ["v_proj", "q_proj"], "task_type": "CAUSAL_LM"}))
    if with_results:
        (root / "all_results.json").write_text(json.dumps({"epoch": 1.0, "train_runtime": 40.0,
                                                           "train_loss": 1.95}))
    return root


def history_rows(monkeypatch, tmp_path) -> list[dict]:
    out = runner.invoke(app, ["history", "--json"])
    assert out.exit_code == 0, out.output
    return json.loads(out.stdout)["rows"]


def test_trl_output_dir_and_torchtune_log_show_up_in_history(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))
    trl_dir(tmp_path / "runs" / "llama1b-r16")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "slurm-101.out").write_text((LOGS / "torchtune_ok.out").read_text())
    res = runner.invoke(app, ["ingest", str(tmp_path / "runs"), str(logs), "--gpu", "A100-80GB"])
    assert res.exit_code == 0, res.output
    rows = {r["run"]: r for r in history_rows(monkeypatch, tmp_path)}
    hf = rows["llama1b-r16"]
    assert hf["kind"] == "ingested" and hf["source"] == "hf-trainer" and hf["device"] == "A100-80GB"
    assert hf["final_loss"] == 1.9 and hf["final_val_loss"] == 1.75 and hf["steps"] == 20
    assert hf["tokens_per_s"] == pytest.approx(2 * 4096 * 10 / 40.0)  # TRL's num_tokens over the runtime
    assert hf["lora_rank"] == 16 and hf["lora_targets"] == "q_proj,v_proj" and hf["batch_size"] == 4
    assert hf["origin_where"].endswith("checkpoint-20/trainer_state.json")
    assert hf["parameters"] == 1235814400  # the catalog's Llama-3.2-1B, from the adapter's base model
    assert "peak_memory_gib" in hf["missing"] and "max_seq_len" in hf["missing"]
    tt = rows["slurm-101"]
    assert tt["kind"] == "ingested" and tt["final_loss"] == 0.00154 and tt["steps"] == 218
    assert tt["final_val_loss"] == 0.02345 and tt["epochs"] == 2
    assert tt["peak_memory_gib"] == 5.12  # the run summary's training peak, not the 2.41 after model init


def test_init_only_memory_is_not_a_training_peak():
    from tunelab.ingest.torchtune import parse_torchtune_log

    text = (LOGS / "torchtune_ok.out").read_text()
    without_summary = text[: text.index("wandb: Run history:")] + "\n"
    run = parse_torchtune_log(without_summary)
    assert run.steps == 218 and run.peak_memory_gib == {}  # only the after-init block: weights, not a peak


def test_bad_dirs_are_named_and_the_rest_imported(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))
    good = trl_dir(tmp_path / "runs" / "good")
    truncated = trl_dir(tmp_path / "runs" / "truncated")
    state = truncated / "checkpoint-20" / "trainer_state.json"
    state.write_text(state.read_text()[:200])
    silent = tmp_path / "runs" / "silent"
    silent.mkdir(parents=True)
    (silent / "trainer_state.json").write_text(json.dumps({"global_step": 0, "log_history": []}))
    res = runner.invoke(app, ["ingest", str(tmp_path / "runs")])
    assert res.exit_code == 0, res.output
    assert "1 of 3 log(s) imported" in res.output
    flat = " ".join(res.output.split())
    assert "damaged trainer_state.json" in flat and "no training losses" in flat
    rows = history_rows(monkeypatch, tmp_path)
    assert [r["run"] for r in rows] == [good.name]


def test_hf_trainer_dirs_are_adopted_with_their_losses_and_factors(tmp_path, write_spec, tiny_model):
    """Two TRL output dirs of different rank become runs of an experiment: per-step losses, the checkpoint's
    adapter (copied; the source untouched), factors from what differs, the base-model control."""
    import yaml

    runs = []
    for name, rank in (("sft-r16", 16), ("sft-r8", 8)):
        root = trl_dir(tmp_path / "src" / name)
        cfg_path = root / "checkpoint-20" / "adapter_config.json"
        cfg_path.write_text(cfg_path.read_text().replace('"r": 16', f'"r": {rank}'))
        (root / "checkpoint-20" / "adapter_model.safetensors").write_bytes(b"weights")
        runs.append(root)
    out = tmp_path / "exp"
    res = runner.invoke(app, ["adopt", *map(str, runs), "--out", str(out), "--spec", str(write_spec()),
                              "--model", str(tiny_model)])
    assert res.exit_code == 0, res.output
    run = out / "runs" / "sft-r8"
    cfg = yaml.safe_load((run / "run.yaml").read_text())
    assert cfg["factors"] == {"lora_rank": 8} and cfg["training"]["lora_rank"] == 8
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows if "loss" in r] == [2.0, 1.9] and rows[-1]["val_loss"] == 1.75
    assert (run / "checkpoints" / "epoch_0" / "adapter_model.safetensors").read_bytes() == b"weights"
    assert (out / "controls" / "tiny_base" / "run.yaml").is_file()
    assert yaml.safe_load((out / "experiment.yaml").read_text())["factors"] == {"lora_rank": [8, 16]}
    assert sorted(p.name for p in runs[0].iterdir()) == ["all_results.json", "checkpoint-20"]  # untouched
