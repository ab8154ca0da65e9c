"""`tunelab init` as a user meets it: the interactive questions through a real pseudo-terminal (pexpect),
and the flags; the spec written must pass `tunelab plan`."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.init.answers import DEFAULTS

pytestmark = pytest.mark.slow
TUNELAB = str(Path(sys.executable).parent / "tunelab")
DOWN, BACKSPACE = "\x1b[B", "\x7f"


@pytest.fixture
def workspace(tmp_path, tiny_model, caps_dataset):
    """cwd with a dataset file in data/; models under a directory named by $TUNELAB_MODELS."""
    (tmp_path / "data").mkdir()
    shutil.copy(caps_dataset, tmp_path / "data" / "words.json")
    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny").symlink_to(tiny_model)
    env = {**os.environ, "TUNELAB_MODELS": str(models), "TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1",
           "COLUMNS": "200"}
    return tmp_path, env


def _spawn(cwd: Path, env: dict, *args: str):
    import pexpect

    return pexpect.spawn(TUNELAB, ["init", *args], cwd=str(cwd), env=env, encoding="utf-8", timeout=90,
                         dimensions=(50, 200))


def test_interactive_init_asks_previews_and_writes_when_confirmed(workspace):
    cwd, env = workspace
    child = _spawn(cwd, env, "--out", "exp")
    child.expect("What do you want to vary")
    child.send(" " + DOWN + " \r")  # nothing is pre-selected (as without --vary): lora_rank and learning_rate
    child.expect("Levels of lora_rank")
    child.send("\r")  # suggested 4,16
    child.expect("Levels of learning_rate")
    child.send(BACKSPACE * 20 + "0.002\r")
    child.expect("Base models")
    child.expect("tiny")  # found under $TUNELAB_MODELS
    child.send("\r")
    child.expect("Datasets")
    child.expect("words.json")  # found in the working directory
    child.send("\r")
    child.expect("Prompt template")
    child.send(BACKSPACE * 10 + "Capitalize: {input}\r")
    child.expect("GPUs per run")
    child.send("\r")  # 1
    child.expect("which GPU will the jobs run on")  # none here: asked, not guessed
    child.send(DOWN * 3 + "\r")  # CPU (proposed, as without --gpu), A100-40GB, A100-80GB, H100-80GB
    child.expect("validation loss")
    child.send("y")
    child.expect("controls")
    child.send("n")
    child.expect("Epochs")
    child.send(BACKSPACE + "2\r")
    child.expect("Experiment name")
    child.send(BACKSPACE * 10 + "caps-ranks\r")
    child.expect("planner for H100-80GB: micro-batch")  # proposed with its reasons
    child.expect("Use the planner's micro-batch")
    child.send("y")
    child.expect("2 fine-tuned \\+ 0 controls")  # the plan previewed before anything is written
    child.expect("Write .*experiment.yaml")
    assert not (cwd / "exp" / "experiment.yaml").exists()
    child.send("y")
    child.expect("wrote")
    child.expect(pexpect_eof())
    spec = yaml.safe_load((cwd / "exp" / "experiment.yaml").read_text())
    assert spec["name"] == "caps-ranks" and spec["factors"] == {"lora_rank": [4, 16], "learning_rate": [0.002]}
    assert spec["controls"] is False and spec["training"]["epochs"] == 2 and spec["resources"]["gpus_per_run"] == 1
    assert {"batch_size", "gradient_accumulation_steps", "packing"} <= set(spec["training"])
    assert spec["training"]["validation_every_steps"] >= 1 and spec["prompt"] == "Capitalize: {input}"
    assert Path(spec["models"][0]["path"]).resolve() == (cwd / "models" / "tiny").resolve()
    assert not list((cwd / "exp").glob(".*init*"))  # no draft left behind
    res = CliRunner().invoke(app, ["plan", str(cwd / "exp" / "experiment.yaml"), "--gpu", "H100-80GB"])
    assert res.exit_code == 0, res.output


def test_interactive_init_cancelled_writes_nothing(workspace):
    cwd, env = workspace
    child = _spawn(cwd, env, "--out", "exp")
    child.expect("What do you want to vary")
    child.sendcontrol("c")
    child.expect("nothing written")
    child.expect(pexpect_eof())
    child.close()
    assert child.exitstatus == 1 and not (cwd / "exp").exists()


def pexpect_eof():
    import pexpect

    return pexpect.EOF


def test_init_flags_write_a_spec_that_plans(tmp_path, tiny_model, caps_dataset):
    runner = CliRunner()
    args = ["init", "--model", str(tiny_model), "--dataset", str(caps_dataset), "--vary", "lora_rank=4,16",
            "--gpus-per-run", "0", "--no-validation", "--no-controls", "--epochs", "3", "--prompt",
            "Capitalize: {input}", "--out", str(tmp_path / "exp")]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    spec = yaml.safe_load((tmp_path / "exp" / "experiment.yaml").read_text())
    assert spec["factors"] == {"lora_rank": [4, 16]} and spec["controls"] is False
    assert "validation_every_steps" not in spec["training"] and spec["training"]["epochs"] == 3
    assert runner.invoke(app, ["plan", str(tmp_path / "exp" / "experiment.yaml")]).exit_code == 0
    again = runner.invoke(app, args)  # an existing spec is never replaced silently
    assert again.exit_code == 1 and "--force" in again.output
    bad = runner.invoke(app, [*args[:5], "--vary", "lora_rank", "--out", str(tmp_path / "other")])
    assert bad.exit_code == 1 and "FIELD=LEVEL" in bad.output and not (tmp_path / "other").exists()


def test_init_for_a_named_gpu_writes_what_estimate_recommends(tmp_path, tiny_model, caps_dataset):
    runner = CliRunner()
    res = runner.invoke(app, ["init", "--model", str(tiny_model), "--dataset", str(caps_dataset), "--vary",
                              "lora_rank=4,16", "--prompt", "Capitalize: {input}", "--gpu", "H100-80GB",
                              "--out", str(tmp_path / "exp")])
    assert res.exit_code == 0, res.output
    written = yaml.safe_load((tmp_path / "exp" / "experiment.yaml").read_text())
    training = written["training"]
    assert written["resources"]["gpu"] == "H100-80GB"  # plan and scaffold later plan for it too
    est = runner.invoke(app, ["estimate", "--model", str(tiny_model), "--gpu", "H100-80GB", "--max-seq-len", "512",
                              "--dataset", str(caps_dataset), "--prompt", "Capitalize: {input}", "--lora-rank", "16",
                              "--json"])
    rec = json.loads(est.stdout)
    assert (training["batch_size"], training["gradient_accumulation_steps"], training["packing"]) == (
        rec["recommended_batch_size"], rec["recommended_gradient_accumulation_steps"], rec["packed"])
    assert "planner for H100-80GB" in res.output and rec["reasons"][0] in " ".join(res.output.split())


def test_init_flags_without_prompt_plan_a_dataset_of_input_output_fields(tmp_path, tiny_model, caps_dataset):
    assert {"input", "output"} <= set(json.loads(caps_dataset.read_text())["train"][0])
    runner = CliRunner()
    res = runner.invoke(app, ["init", "--model", str(tiny_model), "--dataset", str(caps_dataset), "--vary",
                              "lora_rank=4", "--gpus-per-run", "0", "--out", str(tmp_path / "exp")])
    assert res.exit_code == 0, res.output
    spec = tmp_path / "exp" / "experiment.yaml"
    assert yaml.safe_load(spec.read_text())["prompt"] == DEFAULTS.prompt
    res = runner.invoke(app, ["plan", str(spec)])
    assert res.exit_code == 0, res.output


def test_the_wizard_proposes_what_the_flags_assume(workspace):
    """Enter at every question writes the spec that flags naming only the model and dataset write."""
    cwd, env = workspace
    child = _spawn(cwd / "data", env, "--out", str(cwd / "wizard" / "exp"))
    for question in ("What do you want to vary", "Base models", "Datasets", "Prompt template", "GPUs per run",
                     "which GPU will the jobs run on", "validation loss", "controls", "Epochs", "Experiment name"):
        child.expect(question)
        child.send("\r")
    child.expect("Write .*experiment.yaml")
    child.send("y")
    child.expect("wrote")
    child.expect(pexpect_eof())
    wizard = yaml.safe_load((cwd / "wizard" / "exp" / "experiment.yaml").read_text())
    res = CliRunner().invoke(app, ["init", "--model", str(cwd / "models" / "tiny"), "--dataset",
                                   str(cwd / "data" / "words.json"), "--out", str(cwd / "flags" / "exp")])
    assert res.exit_code == 0, res.output
    flags = yaml.safe_load((cwd / "flags" / "exp" / "experiment.yaml").read_text())
    assert wizard == flags
    proposed = (wizard["factors"], wizard["prompt"], wizard["resources"], wizard["controls"],
                wizard["training"]["epochs"], "validation_every_steps" in wizard["training"])
    assert proposed == (DEFAULTS.vary, DEFAULTS.prompt, {"gpus_per_run": DEFAULTS.gpus_per_run}, DEFAULTS.controls,
                        DEFAULTS.epochs, DEFAULTS.validation)
