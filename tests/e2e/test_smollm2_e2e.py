"""A real pretrained chat model (SmolLM2-135M-Instruct: real 49k tokenizer, real ChatML template), LoRA only,
trained for ten steps and evaluated beside its untouched base, through the CLI as a user would.

Sized for the suite's time: 40 rows in micro-batches of 4 (the job's step-cost measurement after training runs
steps of half and twice the micro-batch, so a smaller one also halves that). Seeds 1, 2, 3 and 42 (the default, run
here) got 14, 14, 15 and 14 of the 16 test words right, the base 0 (an untrained adapter, lora_B = 0, answers
exactly as the base does)."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from tunelab.cli import app

pytestmark = pytest.mark.slow
runner = CliRunner()


def _cli(*args: str) -> str:
    res = runner.invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return res.stdout


def test_smollm2_trains_with_lora_and_beats_its_base(tmp_path, smollm2_dir, caps_dataset):
    words = json.loads(caps_dataset.read_text())
    data = tmp_path / "caps.json"
    data.write_text(json.dumps({"train": words["train"][:40], "test": words["test"][:16]}))
    spec = {
        "name": "smol", "models": [{"name": "smol", "path": str(smollm2_dir)}],
        "datasets": [{"name": "caps", "path": str(data)}],
        "prompt": "Capitalize the word: {input}",
        "training": {"epochs": 1, "learning_rate": 0.001, "batch_size": 4, "max_seq_len": 96, "lora_rank": 8,
                     "logging_steps": 2},
        "eval": {"max_tokens": 8},
    }
    spec_path = tmp_path / "experiment.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    _cli("scaffold", str(spec_path))
    _cli("run", str(tmp_path))
    _cli("eval", str(tmp_path))

    summary = json.loads((tmp_path / "runs" / "smol" / "summary.json").read_text())
    assert summary["steps"] == 10 and summary["trainable_params"] < summary["total_params"] / 50  # LoRA only
    rows = [json.loads(line) for line in (tmp_path / "runs" / "smol" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r.get("loss") is not None]
    assert losses[-1] < losses[0]

    from inspect_ai.log import read_eval_log

    (ft_log,) = (tmp_path / "runs" / "smol" / "eval").glob("*/*/*.eval")
    (base_log,) = (tmp_path / "controls" / "smol_base" / "eval").glob("*/*/*.eval")
    ft, base = read_eval_log(str(ft_log)), read_eval_log(str(base_log))
    # The prompt the model saw is SmolLM2's own ChatML rendering (default system prompt included).
    prompt = ft.samples[0].output.metadata["prompt"]
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith(
        f"<|im_start|>user\nCapitalize the word: {ft.samples[0].target.lower()}<|im_end|>\n<|im_start|>assistant\n")

    def accuracy(log) -> float:  # recomputed from the completions, not read from the scorer
        return sum(s.output.completion.strip() == s.target for s in log.samples) / len(log.samples)

    assert accuracy(ft) >= accuracy(base) + 0.5, (accuracy(ft), accuracy(base))  # 8 or more words of 16 more
