"""A vision-language sweep end to end on a CPU (issue 31): the tiny Qwen2.5-VL fine-tuned with LoRA + its base-model
control on the shapes colour pictures, through the CLI: plan, scaffold, run, eval, report. The fine-tuned model
must name the colour far more often than the untrained base, intervals apart. One fine-tuned run: a sweep of
several (what a factor adds) is the text sweep's (tests/e2e/conftest.py finished_sweep, two ranks); here each run
is a training and an eval process, ~15 s of imports each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

SPEC = {
    "name": "vl",
    "models": [{"name": "tvl", "path": "model"}],
    "datasets": [{"name": "colour", "path": "data/shapes_colour_200.json"}],
    "factors": {"lora_rank": [16]},
    # The tiny model's vision tower is random: training the merger in full (beside the LM's LoRA, its embeddings
    # and head) lets the language model read colour from it within 4 epochs.
    "training": {"epochs": 4, "learning_rate": 0.004, "batch_size": 8, "max_seq_len": 160, "logging_steps": 5,
                 "modules_to_save": ["embed_tokens", "lm_head", "merger"]},
    "eval": {"max_tokens": 6},
}


def _scores(exp: Path, kind: str, run: str) -> dict:
    files = sorted((exp / kind / run / "eval").glob("*/exact_match/scores.json"))
    return json.loads(files[-1].read_text())


def test_vlm_sweep_plans_trains_evaluates_and_reports(tmp_path):
    from safetensors import safe_open
    from typer.testing import CliRunner

    from tunelab.cli import app
    from tunelab.data.shapes import make_shapes_dataset
    from tunelab.models.tiny_vl import build_tiny_vl

    exp = tmp_path / "exp"
    make_shapes_dataset("colour", 200, exp / "data", seed=0)
    build_tiny_vl(exp / "model", arch="qwen2_5_vl", seed=0)
    spec = exp / "experiment.yaml"
    spec.write_text(yaml.safe_dump(SPEC, sort_keys=False))
    for command, target in (("plan", spec), ("scaffold", spec), ("run", exp), ("eval", exp), ("report", exp)):
        res = CliRunner().invoke(app, [command, str(target)])
        assert res.exit_code == 0, f"tunelab {command}: {res.output}"
    assert sorted(p.name for p in (exp / "runs").iterdir()) == ["tvl_r16"]
    run = exp / "runs" / "tvl_r16"
    assert json.loads((run / "status.json").read_text())["state"] == "completed"
    with safe_open(run / "checkpoints/epoch_3/adapter_model.safetensors", "pt") as f:
        lora = [k for k in f.keys() if "lora_" in k]
    # LoRA on the language model only: the vision tower's blocks carry none (the merger is trained in full)
    assert lora and all("language_model" in k and "visual" not in k for k in lora), lora[:4]
    control = _scores(exp, "controls", "tvl_base")
    tuned = _scores(exp, "runs", "tvl_r16")
    assert control["samples"] == tuned["samples"] == 20
    # Wilson intervals (stats.intervals) of the test accuracy: the fine-tuned run's lies above the control's.
    assert tuned["intervals"]["accuracy"]["low"] > control["intervals"]["accuracy"]["high"], (tuned, control)
    # scores.json keeps image samples' files and answers; the report shows them as thumbnails with the answers
    tuned_samples = {s["id"]: s for s in tuned["per_sample"]}
    for s in control["per_sample"]:
        assert Path(s["images"][0]).is_file() and s["expected"] == tuned_samples[s["id"]]["expected"]
        assert s["expected"] in {"red", "green", "blue", "yellow"}
        assert (s["answer"] == s["expected"]) == (s["value"] == 1.0)
    report = (exp / "report" / "report.md").read_text()
    assert "## Image answers" in report and "![image answers](figures/image_answers.png)" in report
    first = min(tuned_samples)
    row = f"| `{Path(tuned_samples[first]['images'][0]).name}` | {tuned_samples[first]['expected']} |"
    assert row in report
    html = (exp / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2  # the thumbnails' figure beside the score figures
