"""The spec's `stages:`: a run trained as a sequence (stage k starts from stage k-1's adapter), each stage with its own
training fields on top of the run's; `factors` may sweep one stage's field as `STAGE.FIELD`. The adapter's shape cannot
change between stages: each trains the same LoRA matrices."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from tunelab.spec.base import _Strict, unique_name
from tunelab.spec.training import TrainingConfig

STAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")  # no '.': `STAGE.FIELD` factor keys split on it
# Fields that shape the adapter (or how its base is loaded): equal in every stage, or the next stage could
# not continue from the previous one's adapter.
FIXED_ACROSS_STAGES = ("lora_rank", "lora_alpha", "lora_target_modules", "modules_to_save", "quantize", "dtype")
STAGE_KEYS = ("name", "dataset", "optimizer")


class StageSpec(_Strict):
    """One stage: a name, an optional dataset (default: the run's), how the optimizer starts, and any training
    fields that differ from the run's (written beside the name, e.g. `{name: easy, epochs: 1, order:
    by_length}`)."""

    name: str = Field(description="Short name (letters, digits, '_' or '-'): checkpoints read STAGE/epoch_N. "
                      "Default: the stage's dataset, else stageN (N: its position); -2, -3… when taken.")
    dataset: str | None = Field(None, description="A dataset of `datasets:` to train this stage on; default: "
                                "the run's dataset.")
    optimizer: Literal["fresh", "carried"] = Field(
        "fresh", description="fresh: a new optimizer (and schedule) for this stage; carried: the previous "
        "stage's optimizer moments continue (the learning-rate schedule is this stage's).")
    training: dict[str, Any] = Field(default_factory=dict, description="The stage's own training fields.")

    @model_validator(mode="before")
    @classmethod
    def _gather_training_fields(cls, data: Any) -> Any:
        """`{name: s2, epochs: 1}` -> `{name: s2, training: {epochs: 1}}`: stage fields are written flat."""
        if not isinstance(data, dict):
            return data
        own = {k: v for k, v in data.items() if k in STAGE_KEYS or k == "training"}
        rest = {k: v for k, v in data.items() if k not in own}
        unknown = sorted(set(rest) - set(TrainingConfig.model_fields))
        if unknown:
            raise ValueError(f"unknown stage field(s) {unknown}; a stage takes {', '.join(STAGE_KEYS)} and "
                             "training fields (epochs, learning_rate, order, …)")
        training = {**(own.get("training") or {}), **rest}
        fixed = sorted(set(training) & set(FIXED_ACROSS_STAGES))
        if fixed:
            raise ValueError(f"{', '.join(fixed)}: the adapter's shape is the same in every stage (each stage "
                             "continues the previous one's adapter); set it in training: or sweep it in factors:")
        return {**own, "training": training}

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not STAGE_NAME.match(v):
            raise ValueError("must be a short name of letters, digits, '_' or '-' (no '.')")
        return v


def default_stage_names(stages: Any) -> Any:
    """The raw `stages:` with a name given to each stage written without one: its dataset's name ('.' as '-'),
    else stageN (N: its position), made unique with -2, -3… (never taking a name another stage was given)."""
    if not isinstance(stages, list):
        return stages
    unnamed = [isinstance(s, dict) and s.get("name") is None for s in stages]
    taken = {s["name"] for s, u in zip(stages, unnamed) if isinstance(s, dict) and not u}
    out = []
    for i, (stage, needs) in enumerate(zip(stages, unnamed)):
        if needs:
            dataset = stage.get("dataset")
            base = re.sub(r"[^A-Za-z0-9_-]", "-", dataset) if isinstance(dataset, str) and dataset else f"stage{i + 1}"
            stage = {**stage, "name": unique_name(base, taken)}
            taken.add(stage["name"])
        out.append(stage)
    return out


def stage_training(run: TrainingConfig, stage: dict[str, Any]) -> TrainingConfig:
    """The stage's training: the run's, with the stage's fields on top, validated as a whole."""
    return type(run).model_validate({**run.model_dump(), **stage})


def check_stages(stages: list[StageSpec], training: TrainingConfig, datasets: list[str]) -> None:
    """Names unique, datasets known, every stage's training valid on top of the spec's."""
    names = [s.name for s in stages]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"stages: duplicate name(s) {dupes}")
    for i, s in enumerate(stages):
        if s.dataset is not None and s.dataset not in datasets:
            raise ValueError(f"stages[{i}].dataset: '{s.dataset}' is not one of datasets {datasets}")
        if i == 0 and s.optimizer == "carried":
            raise ValueError(f"stages[{i}].optimizer: the first stage has no previous optimizer to carry")
        try:
            stage_training(training, s.training)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ValueError(f"stages[{i}].{where}: {err['msg']}") from None


def split_stage_factor(key: str) -> tuple[str, str] | None:
    """'main.order' -> ('main', 'order'); None for a plain factor."""
    stage, dot, field = key.partition(".")
    return (stage, field) if dot else None


def check_stage_factor(key: str, levels: list[Any], stages: list[StageSpec], training: TrainingConfig) -> None:
    """`STAGE.FIELD` factors: a known stage, a training field that may vary between stages, valid levels."""
    stage_name, field = split_stage_factor(key) or ("", "")
    stage = next((s for s in stages if s.name == stage_name), None)
    if stage is None:
        raise ValueError(f"factors.{key}: '{stage_name}' is not a stage "
                         f"({', '.join(s.name for s in stages) or 'the spec has no stages:'})")
    if field not in TrainingConfig.model_fields:
        raise ValueError(f"factors.{key}: '{field}' is not a training field")
    if field in FIXED_ACROSS_STAGES:
        raise ValueError(f"factors.{key}: {field} is the same in every stage; sweep it as factors.{field}")
    for i, level in enumerate(levels):
        try:
            stage_training(training, {**stage.training, field: level})
        except ValidationError as exc:
            raise ValueError(f"factors.{key}[{i}]: {level!r}: {exc.errors()[0]['msg']}") from None
