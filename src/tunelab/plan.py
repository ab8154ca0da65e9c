"""plan: verify every resource a sweep needs and lay out its runs, before any job is queued.

Estimates (batch size, memory, time) come from the planner's estimators; until they exist the
plan says so instead of guessing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from typing import Any

from tunelab.catalog import GPU
from tunelab.data.splits import SPLITS, load_splits
from tunelab.estimate.runs import RunEstimate
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
    gpu: GPU | None = None
    estimates: dict[str, RunEstimate] = field(default_factory=dict)

    def totals(self) -> dict[str, Any]:
        secs = [e.seconds for e in self.estimates.values()]
        known = [x for x in secs if x is not None]
        gpu_h = [e.gpu_hours for e in self.estimates.values() if e.gpu_hours is not None]
        return {"seconds": round(sum(known), 1) if known else None, "runs_without_time": len(secs) - len(known),
                "gpu_hours": round(sum(gpu_h), 3) if gpu_h else None}

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


def _length_key(cfg: RunConfig) -> tuple:
    stat = Path(cfg.dataset.path).stat()  # a rewritten dataset file is measured again
    return (cfg.model.path, cfg.dataset.path, cfg.dataset.input_field, cfg.dataset.output_field, cfg.prompt,
            cfg.chat_template, cfg.system_prompt, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=32)
def _lengths(key: tuple) -> tuple[tuple[int, ...], tuple[int, ...]]:
    from transformers import AutoTokenizer

    from tunelab.data.formatting import PromptFormat

    model, dataset, inp, out, prompt, chat, system = key[:7]
    tok = AutoTokenizer.from_pretrained(model)
    fmt = PromptFormat(prompt, chat, system)
    splits = load_splits(dataset, inp, out)
    return tuple(  # type: ignore[return-value]
        tuple(len(fmt.encode_example(r[inp], r[out], tok)["input_ids"]) for r in splits[s])
        for s in ("train", "validation")
    )


def measure_lengths(cfg: RunConfig) -> tuple[list[int], list[int]]:
    """Token lengths of train and validation as training will format them (real tokenizer), measured
    once per model x dataset x prompt format in a process."""
    train, val = _lengths(_length_key(cfg))
    return list(train), list(val)


def estimate_runs(runs: list[RunConfig], gpu: GPU | None) -> dict[str, RunEstimate]:
    """Estimates for every fine-tuned run; datasets measured once per model x dataset x prompt."""
    from tunelab import history
    from tunelab.estimate.runs import estimate_run

    past = history.load()
    threads = None
    if gpu is None:
        import torch

        threads = torch.get_num_threads()
    return {cfg.name: estimate_run(cfg, gpu, *measure_lengths(cfg), past, threads)
            for cfg in runs if cfg.training is not None}


def make_plan(spec_path: str | Path, experiment_dir: str | Path | None = None, gpu: GPU | None = None,
              estimates: bool = True) -> Plan:
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
    plan = Plan(spec, spec_path, exp_dir, runs, models, datasets, recipe, warnings, gpu)
    if estimates:
        plan.estimates = estimate_runs(runs, gpu)
        for e in plan.estimates.values():
            if e.peak_memory_gib is not None and e.gpu_memory_gib and e.peak_memory_gib > e.gpu_memory_gib:
                plan.warnings.append(f"{e.run}: predicted peak {e.peak_memory_gib} GiB exceeds {gpu.name}'s "
                                     f"{e.gpu_memory_gib:g} GiB (run `tunelab validate` for a batch that fits)")
    return plan


def _factor_text(run: RunConfig, swept: list[str]) -> str:
    return ", ".join(f"{k}={run.factors[k]}" for k in swept if k in run.factors) or "—"


def _fmt_seconds(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def plan_rows(plan: Plan) -> list[dict[str, str]]:
    """One row per run: what the table in the terminal and in plan.md show."""
    swept = plan.spec.swept_factors()
    rows = []
    for i, r in enumerate(plan.runs, 1):
        t = r.training
        e = plan.estimates.get(r.name)
        rows.append({
            "#": str(i),
            "run": r.name,
            "type": "fine-tuned" if r.kind == "finetune" else "control",
            "model": r.model.name,
            "dataset": r.dataset.name,
            "factors": _factor_text(r, swept),
            "batch": f"{t.batch_size}×{t.gradient_accumulation_steps}" if t else "—",
            "packing": ("on" if t.packing else "off") if t else "—",
            "steps": str(e.steps) if e else "—",
            "peak/GPU (GiB)": (f"{e.peak_memory_gib:.1f}/{e.gpu_memory_gib:g}" if e and e.peak_memory_gib is not None
                               else "—"),
            "est. time": (_fmt_seconds(e.seconds) if e and e.seconds else "—") if t else "eval only",
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
              "## Estimates", ""]
    target = plan.gpu.name if plan.gpu else "this machine's CPU"
    lines += [f"Target: {target}. Each figure names its source: measured history (the user-level history "
              "ledger) or a model.", ""]
    if plan.estimates:
        lines += ["| Run | Micro-batch × accum | Packing | Tokens/micro-batch | Peak / GPU (GiB) | Memory source | "
                  "Steps | Tokens/s | Time | Time source | GPU-h | SLURM limit |", "|" + "---|" * 12]
        for e in plan.estimates.values():
            lines.append(
                f"| {e.run} | {e.micro_batch} × {e.gradient_accumulation_steps} | {'on' if e.packed else 'off'} | "
                f"{e.tokens_per_microbatch:,} | "
                + (f"{e.peak_memory_gib:.1f} / {e.gpu_memory_gib:g}" if e.peak_memory_gib is not None else "—")
                + f" | {e.memory_source} | {e.steps} | {f'{e.tokens_per_s:,.0f}' if e.tokens_per_s else '—'} | "
                f"{_fmt_seconds(e.seconds) if e.seconds else '—'} | {e.time_source} | "
                f"{e.gpu_hours if e.gpu_hours is not None else '—'} | {e.slurm_time_limit or '—'} |")
        tot = plan.totals()
        lines += ["", f"**Total:** {_fmt_seconds(tot['seconds']) if tot['seconds'] else '—'} of training"
                  + (f" ({tot['runs_without_time']} run(s) without a time estimate)" if tot["runs_without_time"] else "")
                  + (f", {tot['gpu_hours']} GPU-hours" if tot["gpu_hours"] is not None else ""), ""]
    if plan.warnings:
        lines += ["## Warnings", ""] + [f"- {w}" for w in plan.warnings] + [""]
    return "\n".join(lines)
