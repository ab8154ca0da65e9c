"""plan: verify every resource a sweep needs and lay out its runs, before any job is queued.

Estimates (batch size, memory, time) come from the planner's estimators; until they exist the
plan says so instead of guessing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tunelab.data.splits import SPLITS, load_splits
from tunelab.design import expand_runs
from tunelab.errors import TunelabError
from tunelab.models.check import ModelInfo, check_model_dir
from tunelab.runconfig import RunConfig
from tunelab.spec import ExperimentSpec, load_spec, resolve_path


@dataclass
class Plan:
    spec: ExperimentSpec
    spec_path: Path
    experiment_dir: Path
    runs: list[RunConfig]
    models: dict[str, ModelInfo]
    datasets: dict[str, dict[str, int]]
    recipe: str
    warnings: list[str] = field(default_factory=list)

    @property
    def finetune_runs(self) -> list[RunConfig]:
        return [r for r in self.runs if r.kind == "finetune"]

    @property
    def controls(self) -> list[RunConfig]:
        return [r for r in self.runs if r.kind == "control"]


def verify_resources(spec: ExperimentSpec, spec_path: Path) -> tuple[dict[str, ModelInfo], dict[str, dict[str, int]]]:
    """Check model dirs and dataset splits; errors name the spec file and the field at fault."""
    base = spec_path.parent
    models: dict[str, ModelInfo] = {}
    for i, m in enumerate(spec.models):
        if m.name not in spec.model_levels():
            continue
        try:
            models[m.name] = check_model_dir(resolve_path(base, m.path))
        except TunelabError as exc:
            raise TunelabError(str(exc), file=spec_path, field=f"models[{i}].path") from None
    datasets: dict[str, dict[str, int]] = {}
    for i, d in enumerate(spec.datasets):
        if d.name not in spec.dataset_levels():
            continue
        try:
            splits = load_splits(resolve_path(base, d.path), d.input_field, d.output_field)
        except TunelabError as exc:
            raise TunelabError(str(exc), file=spec_path, field=f"datasets[{i}].path") from None
        datasets[d.name] = {s: len(splits[s]) for s in SPLITS}
    return models, datasets


def make_plan(spec_path: str | Path, experiment_dir: str | Path | None = None) -> Plan:
    spec_path = Path(spec_path).resolve()
    spec = load_spec(spec_path)
    exp_dir = Path(experiment_dir).resolve() if experiment_dir else spec_path.parent
    models, datasets = verify_resources(spec, spec_path)
    runs = expand_runs(spec, spec_path.parent, exp_dir)
    gpus = spec.resources.gpus_per_run
    recipe = "single device" if gpus <= 1 else f"distributed ({gpus} GPUs per run)"
    recipe += ", validation loss every " + (
        f"{spec.training.validation_every_steps} steps" if spec.training.validation_every_steps else "— (off)"
    )
    warnings = []
    for name, info in models.items():
        if spec.chat_template == "always" and not info.has_chat_template:
            raise TunelabError(f"chat_template is 'always' but model '{name}' has no chat template", file=spec_path,
                               field="chat_template")
    tiny = any((Path(i.path) / "tunelab_tiny.json").is_file() for i in models.values())
    if tiny and any(r.training and not r.training.modules_to_save for r in runs):
        warnings.append("random-init tiny models barely learn with LoRA alone: add modules_to_save: [embed_tokens, lm_head]")
    return Plan(spec, spec_path, exp_dir, runs, models, datasets, recipe, warnings)


def _factor_text(run: RunConfig, swept: list[str]) -> str:
    return ", ".join(f"{k}={run.factors[k]}" for k in swept if k in run.factors) or "—"


def plan_rows(plan: Plan) -> list[dict[str, str]]:
    """One row per run: what the table in the terminal and in plan.md show."""
    swept = plan.spec.swept_factors()
    rows = []
    for i, r in enumerate(plan.runs, 1):
        t = r.training
        rows.append({
            "#": str(i),
            "run": r.name,
            "type": "fine-tuned" if r.kind == "finetune" else "control",
            "model": r.model.name,
            "dataset": r.dataset.name,
            "factors": _factor_text(r, swept),
            "batch": f"{t.batch_size}×{t.gradient_accumulation_steps}" if t else "—",
            "packing": ("on" if t.packing else "off") if t else "—",
            "est. time": "—" if t else "eval only",
        })
    return rows


def render_plan_md(plan: Plan) -> str:
    spec = plan.spec
    lines = [f"# Plan: {spec.name}", ""]
    if spec.description:
        lines += [spec.description.strip(), ""]
    n_ft, n_ctl = len(plan.finetune_runs), len(plan.controls)
    lines += [
        f"**Runs:** {len(plan.runs)} ({n_ft} fine-tuned + {n_ctl} controls)  ",
        f"**Recipe:** {plan.recipe}  ",
        f"**Naming:** `{spec.naming_pattern()}` (controls: `{{model}}_base`)",
        "",
        "## Factors",
        "",
        "| Factor | Levels |",
        "|---|---|",
        f"| model | {', '.join(spec.model_levels())} |",
        f"| dataset | {', '.join(spec.dataset_levels())} |",
    ]
    lines += [f"| {k} | {', '.join(map(str, v))} |" for k, v in spec.factors.items() if k not in ("model", "dataset")]
    rows = plan_rows(plan)
    lines += ["", "## Runs", "", "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r.values()) + " |" for r in rows]
    lines += ["", "## Resources verified", "", "| Model | Path | Type | Layers × hidden | Vocab | Weights | Chat template |",
              "|---|---|---|---|---|---|---|"]
    for name, m in plan.models.items():
        lines.append(f"| {name} | `{m.path}` | {m.model_type} | {m.layers} × {m.hidden} | {m.vocab_size} | "
                     f"{m.weights_bytes / 2**20:.1f} MiB | {'yes' if m.has_chat_template else 'no'} |")
    lines += ["", "| Dataset | Path | train | validation | test |", "|---|---|---|---|---|"]
    for d in spec.datasets:
        if d.name in plan.datasets:
            n = plan.datasets[d.name]
            lines.append(f"| {d.name} | `{resolve_path(plan.spec_path.parent, d.path)}` | {n['train']} | "
                         f"{n['validation']} | {n['test']} |")
    lines += ["", f"Evaluation: inspect-ai task `{spec.eval.task}` on the `{spec.eval.split}` split, greedy, "
              f"max {spec.eval.max_tokens} tokens, epochs: {spec.eval.epochs}.", "",
              "## Estimates", "",
              "Memory, batch size and time estimates are not computed yet (planner estimators pending); "
              "no figure here is guessed.", ""]
    if plan.warnings:
        lines += ["## Warnings", ""] + [f"- {w}" for w in plan.warnings] + [""]
    return "\n".join(lines)
