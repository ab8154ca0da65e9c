"""The demo: a real, tiny sweep on CPU, end to end, with nothing downloaded.

Two tiny Llama-architecture models × LoRA ranks {4, 16} fine-tuned on capitalization, plus one
base-model control per model: plan → scaffold → run → eval → report.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from rich.console import Console

from tunelab.errors import TunelabError

DEMO_MODELS = (("tiny-2x128", 2, 128, 0), ("tiny-4x256", 4, 256, 1))
WORD_LEN, NUM_WORDS, DATA_SEED = 5, 2000, 0


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


def prepare_inputs(out: Path, console: Console, executor: str = "local") -> Path:
    """Build the tiny models and the dataset (once), write experiment/experiment.yaml; return its path."""
    from tunelab.data.capitalization import dataset_filename, make_capitalization_dataset
    from tunelab.models.check import check_model_dir
    from tunelab.models.tiny import build_tiny_model

    models: dict[str, str] = {}
    for name, layers, hidden, seed in DEMO_MODELS:
        path = out / "models" / name
        try:
            check_model_dir(path)
        except TunelabError:
            console.print(f"building model {name} ({layers} layers × {hidden}, seed {seed})")
            build_tiny_model(path, layers=layers, hidden=hidden, seed=seed)
        models[name] = f"../models/{name}"
    data = out / "data" / dataset_filename(WORD_LEN, 0.8, NUM_WORDS)
    if not data.is_file():
        console.print(f"generating dataset {data.name}")
        make_capitalization_dataset(WORD_LEN, NUM_WORDS, out / "data", 0.8, DATA_SEED)
    spec_path = out / "experiment" / "experiment.yaml"
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec = demo_spec(models, f"../data/{data.name}")
    if executor == "slurm":  # CPU jobs: no GPU to ask for
        spec["resources"] = {"executor": "slurm", "gpus_per_run": 0}
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return spec_path


def run_demo(out: str | Path, force: bool = False, console: Console | None = None, executor: str = "local") -> Path:
    from tunelab.evaluate.sweep import evaluate_experiment
    from tunelab.execute.local import run_local
    from tunelab.report.markdown import write_report
    from tunelab.scaffold import scaffold

    console = console or Console()
    out = Path(out).resolve()
    spec_path = prepare_inputs(out, console, executor)
    console.rule("plan + scaffold")
    plan = scaffold(spec_path, force=force)
    console.print(f"{len(plan.finetune_runs)} fine-tuned runs + {len(plan.controls)} controls in {plan.experiment_dir}")
    if executor == "slurm":
        from tunelab.execute.slurm import run_slurm

        console.rule("submit to Slurm: train, then evaluate (afterok)")
        results = run_slurm(plan.experiment_dir, force=force, wait=True, console=console)
        failed = {k: v for k, v in results.items() if v != "completed"}
        if failed:
            raise TunelabError(f"runs did not complete: {failed}; see `tunelab status {plan.experiment_dir}`",
                               file=plan.experiment_dir)
        console.rule("report")
        return write_report(plan.experiment_dir)
    console.rule("train")
    results = run_local(plan.experiment_dir, force=force, console=console)
    failed = {k: v for k, v in results.items() if v != "completed"}
    if failed:
        raise TunelabError(f"runs did not complete: {failed}; see runs/<run>/train.log", file=plan.experiment_dir)
    console.rule("evaluate")
    evaluate_experiment(plan.experiment_dir, force=force, console=console)
    console.rule("report")
    return write_report(plan.experiment_dir)
