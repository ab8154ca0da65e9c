"""A two-stage curriculum of image tasks (issue 31's done-when) through the CLI on the tiny Qwen2.5-VL: stage 1
on the shapes colour pictures, stage 2 on the position pictures, then evaluated after each stage. Checked are
the stage records (steps = ⌈rows / batch⌉ × epochs, stage 2 counting on from stage 1) and that stage 2 starts
from stage 1's adapter, not what the model learns (test_vlm_sweep.py checks learning)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

BATCH = 8
SPEC = {
    "name": "vlstages",
    "models": [{"name": "tvl", "path": "model"}],
    "datasets": [{"name": "colour", "path": "data/shapes_colour_25.json"},
                 {"name": "position", "path": "data/shapes_position_15.json"}],
    "controls": False,
    "factors": {"lora_rank": [4]},
    # 176: the longest position example (164 tokens with its image) keeps its answer: `tunelab run` refuses cut ones
    "training": {"batch_size": BATCH, "max_seq_len": 176, "logging_steps": 1, "learning_rate": 0.004},
    # stage 2 at a learning rate too small to move a weight visibly: its adapter must then equal stage 1's,
    # which it can only if it started from it (a fresh adapter's lora_B is zero)
    "stages": [{"name": "colour", "dataset": "colour", "epochs": 1},
               {"name": "position", "dataset": "position", "epochs": 2, "learning_rate": 1e-12}],
    "eval": {"max_tokens": 4, "limit": 2},
}


def _adapter(run: Path, epoch: int) -> dict:
    from safetensors.torch import load_file

    return load_file(run / "checkpoints" / f"epoch_{epoch}" / "adapter_model.safetensors")


def test_two_stage_image_curriculum_trains_both_stages_and_evaluates_each(tmp_path):
    import torch
    from typer.testing import CliRunner

    from tunelab.cli import app
    from tunelab.data.shapes import make_shapes_dataset
    from tunelab.models.tiny_vl import build_tiny_vl

    exp = tmp_path / "exp"
    rows = {}
    for task, n in (("colour", 25), ("position", 15)):
        path = make_shapes_dataset(task, n, exp / "data", seed=1)
        rows[task] = len(json.loads(path.read_text())["train"])
    build_tiny_vl(exp / "model", arch="qwen2_5_vl", seed=0)
    spec = exp / "experiment.yaml"
    spec.write_text(yaml.safe_dump(SPEC, sort_keys=False))
    for command, target in (("plan", spec), ("scaffold", spec), ("run", exp), ("eval", exp)):
        res = CliRunner().invoke(app, [command, str(target)])
        assert res.exit_code == 0, f"tunelab {command}: {res.output}"

    run = exp / "runs" / "tvl_r4"
    colour, position = math.ceil(rows["colour"] / BATCH), 2 * math.ceil(rows["position"] / BATCH)
    stages = json.loads((run / "stages.json").read_text())
    assert [(s["name"], s["dataset"], s["epochs"], s["first_step"], s["last_step"]) for s in stages] == [
        ("colour", "colour", [0], 0, colour), ("position", "position", [1, 2], colour, colour + position)]
    assert json.loads((run / "summary.json").read_text())["steps"] == colour + position

    first, last = _adapter(run, 0), _adapter(run, 2)
    lora_b = [k for k in first if "lora_B" in k]
    assert lora_b and sorted(first) == sorted(last)
    assert max(first[k].abs().max().item() for k in lora_b) > 1e-4  # stage 1 moved lora_B off zero
    for key in first:  # and stage 2 carried every tensor on
        assert torch.allclose(first[key].float(), last[key].float(), atol=1e-6), key

    # evaluated after each stage (a staged run's default): the last checkpoint of each, on image samples
    evaluated = sorted(p.parents[1].name for p in (run / "eval").glob("*/exact_match/scores.json"))
    assert evaluated == ["epoch_0", "epoch_2"]
    for p in (run / "eval").glob("*/exact_match/scores.json"):
        samples = json.loads(p.read_text())["per_sample"]
        assert len(samples) == 2 and all(Path(s["images"][0]).is_file() for s in samples)
