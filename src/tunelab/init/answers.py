"""The answers of `tunelab init` → an experiment.yaml that `tunelab plan` accepts: validated and planned from a
temporary file, moved into place only once it plans, so a failed init leaves nothing half-right."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tunelab.errors import TunelabError
from tunelab.fsutil import atomic_write_text, dump_yaml

SPEC_FILE = "experiment.yaml"
VALIDATIONS_PER_EPOCH = 4  # validation loss this often when tracked: enough points for a curve, little time


@dataclass(frozen=True)
class InitDefaults:
    """What `tunelab init` takes for an unanswered question: the wizard's proposals and the flags' defaults alike."""

    vary: dict[str, list[Any]] = field(default_factory=dict)  # no factor: one run per model × dataset
    # field rows read their input column; prompt/completion rows: '{input}' is the prompt; chat rows: unused
    prompt: str = "{input}"
    gpus_per_run: int = 1
    validation: bool = True
    controls: bool = True
    epochs: int = 1
    # the levels the wizard suggests for a factor once it is chosen (--vary always names its levels)
    levels: dict[str, str] = field(default_factory=lambda: {
        "lora_rank": "4,16", "learning_rate": "1e-4,2e-4", "epochs": "1,3", "lora_alpha": "16,32",
        "batch_size": "4,8", "seed": "0,1,2"})


DEFAULTS = InitDefaults()


def default_name(out: Path) -> str:
    """The experiment's name when none is given: its directory's."""
    return slug(spec_path(out).resolve().parent.name)


@dataclass
class InitAnswers:
    name: str
    models: list[Path]
    datasets: list[Path]
    vary: dict[str, list[Any]] = field(default_factory=lambda: dict(DEFAULTS.vary))
    gpus_per_run: int = DEFAULTS.gpus_per_run
    validation: bool = DEFAULTS.validation
    controls: bool = DEFAULTS.controls
    epochs: int = DEFAULTS.epochs
    prompt: str | None = DEFAULTS.prompt
    batch: BatchProposal | None = None  # the planner's micro-batch, accumulation and packing, when accepted
    gpu: str | None = None  # the GPU the jobs will run on, when asked (none detected or named)


@dataclass
class BatchProposal:
    """What `tunelab estimate` recommends for the first model and dataset on the target GPU."""

    batch_size: int
    gradient_accumulation_steps: int
    packing: bool
    reasons: list[str]


def propose_batch(answers: InitAnswers, gpu) -> BatchProposal:
    """Micro-batch, accumulation and packing for the largest LoRA rank swept, measured on the first
    dataset with the first model's tokenizer (the memory model needs a GPU: named or detected)."""
    from tunelab.estimate.memory import MemoryInputs
    from tunelab.forecast.api import estimate_config
    from tunelab.spec import TrainingConfig

    ranks = [r for r in answers.vary.get("lora_rank", []) if isinstance(r, int)] or [TrainingConfig().lora_rank]
    t = TrainingConfig(lora_rank=max(ranks))
    inputs = MemoryInputs.of_training(t, t.planned_dtype(gpu.compute_capability))
    est = estimate_config(answers.models[0], gpu, t.max_seq_len, inputs,
                          dataset=answers.datasets[0], prompt=answers.prompt, epochs=answers.epochs,
                          processes=max(1, answers.gpus_per_run))  # per GPU of the run; strategy: auto
    return BatchProposal(est.recommended_batch_size, est.recommended_gradient_accumulation_steps, est.packed,
                         est.reasons)


def parse_level(text: str) -> Any:
    """'16' → 16, '2e-4' → 0.0002, 'true' → True, anything else stays text."""
    text = text.strip()
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_vary(items: list[str]) -> dict[str, list[Any]]:
    """['lora_rank=4,16', 'learning_rate=1e-4,2e-4'] → {'lora_rank': [4, 16], 'learning_rate': [...]}."""
    out: dict[str, list[Any]] = {}
    for item in items:
        key, sep, levels = item.partition("=")
        key = key.strip()
        if not sep or not key or not levels.strip():
            raise TunelabError(f"{item!r}: write FIELD=LEVEL,LEVEL, e.g. lora_rank=4,16", field="--vary")
        if key in ("model", "dataset"):
            raise TunelabError(f"{item!r}: name several models or datasets with --model/--dataset instead",
                               field="--vary")
        out[key] = [parse_level(v) for v in levels.split(",") if v.strip()]
    return out


def slug(text: str) -> str:
    """A name usable in run names: letters, digits, '.', '_', '-'."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")
    return s or "x"


def _named(paths: list[Path], stem: bool) -> list[dict[str, str]]:
    """[{name, path}] with unique names from the directory or file names."""
    from tunelab.spec.base import unique_name

    out: list[dict[str, str]] = []
    seen: set[str] = set()
    for p in paths:
        name = unique_name(slug(p.stem if stem else p.name), seen)
        seen.add(name)
        out.append({"name": name, "path": str(p.resolve())})
    return out


def build_spec(answers: InitAnswers, validation_every_steps: int | None = None) -> dict[str, Any]:
    """The spec as plain data, in the order a person reads it."""
    if not answers.models:
        raise TunelabError("name at least one base model directory", field="--model")
    if not answers.datasets:
        raise TunelabError("name at least one dataset file", field="--dataset")
    spec: dict[str, Any] = {"name": slug(answers.name), "models": _named(answers.models, stem=False),
                            "datasets": _named(answers.datasets, stem=True)}
    if answers.prompt:
        spec["prompt"] = answers.prompt
    spec["factors"] = dict(answers.vary)
    spec["controls"] = answers.controls
    training: dict[str, Any] = {"epochs": answers.epochs}
    if answers.batch:
        training.update(batch_size=answers.batch.batch_size,
                        gradient_accumulation_steps=answers.batch.gradient_accumulation_steps,
                        packing=answers.batch.packing)
    if answers.validation:
        training["validation_every_steps"] = validation_every_steps or 50
    spec["training"] = training
    spec["resources"] = {"gpus_per_run": answers.gpus_per_run, **({"gpu": answers.gpu} if answers.gpu else {})}
    return spec


def _check(spec: dict[str, Any], path: Path) -> None:
    from tunelab.spec import ExperimentSpec

    try:
        ExperimentSpec.model_validate(spec)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise TunelabError(f"{err['msg']} (from the answers given)", file=path, field=where) from None


def spec_path(out: Path) -> Path:
    """--out names the spec file (*.yaml) or the experiment directory that gets experiment.yaml."""
    return out if out.suffix in (".yaml", ".yml") else out / SPEC_FILE


def draft(answers: InitAnswers, out: Path, gpu=None, force: bool = False):
    """Write the spec to a temporary file beside its destination and plan it; return (temp path, plan).
    Validation steps are set from the planned steps per epoch. The caller moves or deletes the file."""
    from tunelab.plan.planner import make_plan

    path = spec_path(out)
    if path.exists() and not force:
        raise TunelabError("already exists: pass --force to replace it", file=path)
    tmp = path.with_name(f".{path.name}.init.yaml")
    spec = build_spec(answers)
    _check(spec, path)
    atomic_write_text(tmp, dump_yaml(spec))
    try:
        plan = make_plan(tmp, path.parent, gpu=gpu)
        if answers.validation:
            steps = [e.steps // max(answers.epochs, 1) for e in plan.estimates.values() if e and e.steps]
            every = max(1, min(steps) // VALIDATIONS_PER_EPOCH) if steps else None
            if every:
                atomic_write_text(tmp, dump_yaml(build_spec(answers, every)))
                plan = make_plan(tmp, path.parent, gpu=gpu)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, plan


def commit(tmp: Path, out: Path) -> Path:
    """Move a planned draft into place."""
    path = spec_path(out)
    os.replace(tmp, path)
    return path
