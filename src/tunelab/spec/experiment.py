"""The experiment spec (experiment.yaml), validated strictly: every mistake names the file, the dotted field path and
what was expected, because a typo found after two hours in a queue costs two hours."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from tunelab.spec.base import Slug, _Strict, load_yaml_model, validate_mapping
from tunelab.spec.evaluation import EvalOnlySpec, EvalSpec
from tunelab.spec.resources import ResourcesSpec
from tunelab.spec.stages import StageSpec, check_stage_factor, check_stages, default_stage_names, split_stage_factor
from tunelab.spec.training import TrainingConfig
from tunelab.spec.tune import TuneSpec, check_tune

RowFormat = Literal["auto", "chat", "prompt_completion", "fields"]
SPLIT_NAMES = ("train", "validation", "test")


class SplitFractions(_Strict):
    """Carve validation/test out of the training rows, seeded; written once into the experiment dir."""

    validation: float = Field(0.0, ge=0, lt=1, description="Share of the rows held out for validation.")
    test: float = Field(0.0, ge=0, lt=1, description="Share of the rows held out for testing.")
    seed: int = Field(0, description="Shuffle seed (recorded with the split).")

    @model_validator(mode="after")
    def _leaves_training_rows(self) -> SplitFractions:
        if self.validation + self.test >= 1:
            raise ValueError("validation + test must leave rows for training (sum below 1)")
        if self.validation == 0 and self.test == 0:
            raise ValueError("give a validation and/or test fraction above 0")
        return self


class DatasetSpec(_Strict):
    """One dataset: a file or directory with splits, or one file per split, in any format `datasets` reads."""

    name: Slug = Field(description="Short name used in run names and to refer to it from eval tasks.")
    path: str | None = Field(
        None, description="One file or directory: JSON with train/validation/test lists, JSON/JSONL rows, CSV, "
        "Parquet, or a datasets save_to_disk directory. Relative to the spec file.")
    train: str | None = Field(None, description="One file per split: the training rows.")
    validation: str | None = Field(None, description="One file per split: the validation rows.")
    test: str | None = Field(None, description="One file per split: the test rows.")
    format: RowFormat = Field(
        "auto", description="Row format: chat (messages), prompt_completion (prompt/completion), fields (the "
        "prompt template's placeholders name columns; output_field is the answer); auto detects it.")
    input_field: str = Field("input", description="The column that the prompt's '{input}' placeholder reads.")
    output_field: str = Field("output", description="fields format: the column holding the answer.")
    image_field: str | None = Field(
        None, description="fields format: the column holding each row's image (a path relative to the dataset "
        "file, or a datasets Image column), shown before the prompt's text (vision-language models).")
    split: SplitFractions | None = Field(
        None, description="Split the rows by the spec, e.g. {validation: 0.1, test: 0.1, seed: 0}.")
    eval_only: bool = Field(False, description="Only evaluated on (by eval tasks), never trained on.")

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        per_split = [s for s in SPLIT_NAMES if getattr(self, s)]
        if self.path and per_split:
            raise ValueError(f"give either path or per-split files ({', '.join(per_split)}), not both")
        if not self.path and not per_split:
            raise ValueError("needs path (one file or directory) or per-split files (train:, validation:, test:)")
        if per_split and not self.train and not self.eval_only:
            raise ValueError("per-split files need train: (or eval_only: true)")
        return self

    def split_files(self) -> dict[str, str]:
        """{split: file} for per-split files; {'*': path} for one source holding (or split into) all."""
        if self.path:
            return {"*": self.path}
        return {s: getattr(self, s) for s in SPLIT_NAMES if getattr(self, s)}


# Llama 3.x chat templates print "Today Date: ..." from the clock unless given one: pinned, so a
# run trained today and evaluated next month sees the same tokens.
DEFAULT_TEMPLATE_DATE = "26 Jul 2024"
AXES = ("model", "dataset", "prompt")  # factors that are not training fields


class ModelSpec(_Strict):
    """A base model: a short name used in run names and a local Hugging Face model directory."""

    name: Slug = Field(description="Short, filesystem-safe name used in run names, e.g. 'llama1b'.")
    path: str = Field(description="Local HF model directory (relative to the spec file or absolute).")


def template_fields(template: str) -> list[str]:
    """The placeholders of a prompt template, in order; raises ValueError on a malformed one."""
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ValueError(f"is not a valid template ({exc}); write literal braces as '{{{{' and '}}}}'") from exc
    for n in names:
        if not n.isidentifier():
            raise ValueError(f"placeholder {{{n}}} must name a field, e.g. '{{input}}' or '{{question}}'")
    return list(dict.fromkeys(names))


FACTOR_ABBREVIATIONS = {
    "lora_rank": "r",
    "lora_alpha": "a",
    "learning_rate": "lr",
    "batch_size": "bs",
    "epochs": "ep",
    "lora_dropout": "do",
    "max_seq_len": "len",
    "seed": "s",
}


class ExperimentSpec(_Strict):
    """experiment.yaml: models x datasets x factors, plus controls, training defaults and eval."""

    name: Slug
    description: str = ""
    models: list[ModelSpec] = Field(min_length=1)
    datasets: list[DatasetSpec] = Field(min_length=1)
    prompt: str | None = Field(
        None, description="Prompt template: placeholders name fields of a row ('{input}' reads input_field), "
        "e.g. 'Question: {question}\\nContext: {context}'. Needed for field rows; optional for prompt/completion "
        "rows ('{input}' = the prompt); unused for chat rows.")
    system_prompt: str | None = Field(None, description="System message for rows without one.")
    chat_template: Literal["auto", "always", "never"] = Field(
        "auto", description="Use the tokenizer's chat template: auto = when it has one; never = plain text "
        "completion (base models).")
    chat_template_date: str = Field(
        DEFAULT_TEMPLATE_DATE, description="The date Llama 3.x templates print (pinned for train/eval parity).")
    factors: dict[str, list[Any]] = Field(
        default_factory=dict, description="Levels to sweep: model, dataset, prompt (templates) or any training field.")
    controls: bool = Field(True, description="Evaluate each base model without fine-tuning.")
    naming: str | None = Field(None, description="Run name pattern, e.g. '{model}_r{lora_rank}'.")
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    stages: list[StageSpec] = Field(
        default_factory=list, description="Train every run as a sequence of stages, each starting from the "
        "previous stage's adapter, e.g. [{name: easy, dataset: easy, epochs: 1}, {name: hard, dataset: hard, "
        "order: by_length}]; sweep one stage's field as factors: {hard.order: [shuffled, by_length]}. A stage "
        "without a name is named after its dataset, else stageN.")
    eval: EvalSpec = Field(default_factory=EvalSpec)
    eval_only: list[EvalOnlySpec] = Field(
        default_factory=list, description="Adapters or checkpoints trained elsewhere, evaluated beside the runs.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    tune: TuneSpec | None = Field(
        None, description="A learning-rate search per combination of factor levels before the sweep trains "
        "(`tunelab tune`, or `tunelab run` first where it has not run); each combination's runs then train at its "
        "best rate.")

    @model_validator(mode="before")
    @classmethod
    def _name_stages(cls, data: Any) -> Any:
        """Stages written without `name:` are named before they are read (names depend on the other stages)."""
        if isinstance(data, dict) and "stages" in data:
            return {**data, "stages": default_stage_names(data["stages"])}
        return data

    @field_validator("prompt")
    @classmethod
    def _prompt_is_template(cls, v: str | None) -> str | None:
        if v is not None and not template_fields(v):
            raise ValueError("must name at least one field of the rows, e.g. '{input}' (rows bring their own "
                             "prompt? leave prompt out)")
        return v

    @model_validator(mode="after")
    def _check_factors_and_names(self) -> ExperimentSpec:
        model_names = [m.name for m in self.models]
        dataset_names = [d.name for d in self.datasets]
        for label, names in (("models", model_names), ("datasets", dataset_names),
                             ("eval_only", [e.name for e in self.eval_only])):
            dupes = {n for n in names if names.count(n) > 1}
            if dupes:
                raise ValueError(f"{label}: duplicate name(s) {sorted(dupes)}")
        check_stages(self.stages, self.training, [d.name for d in self.datasets if not d.eval_only])
        for key, levels in self.factors.items():
            if split_stage_factor(key):
                check_stage_factor(key, levels, self.stages, self.training)
                if len(set(map(repr, levels))) != len(levels):
                    raise ValueError(f"factors.{key}: levels repeat")
                continue
            self._check_factor(key, levels, model_names, dataset_names)
        if not self.dataset_levels():
            raise ValueError("datasets: every dataset is eval_only; at least one must be trained on")
        for i, d in enumerate(self.datasets):
            if d.format == "fields" and not self.prompt_levels():
                raise ValueError(f"datasets[{i}].format: 'fields' rows need a prompt template (prompt:)")
        for i, t in enumerate(self.eval.tasks):
            if t.dataset is not None and t.dataset not in dataset_names:
                raise ValueError(f"eval.tasks[{i}].dataset: '{t.dataset}' is not one of datasets {dataset_names}")
            if t.prompt is not None:
                try:
                    template_fields(t.prompt)
                except ValueError as exc:
                    raise ValueError(f"eval.tasks[{i}].prompt: {exc}") from None
        for i, e in enumerate(self.eval_only):
            if e.model is not None and e.model not in model_names:
                raise ValueError(f"eval_only[{i}].model: '{e.model}' is not one of models {model_names}")
        self._check_naming()
        check_tune(self.tune, self.factors, self.eval, bool(self.stages))
        return self

    def _check_factor(self, key: str, levels: list[Any], model_names: list[str], dataset_names: list[str]) -> None:
        if key not in set(TrainingConfig.model_fields) | set(AXES):
            raise ValueError(
                f"factors.{key}: unknown factor; use {', '.join(AXES)}, a training field "
                f"({', '.join(sorted(TrainingConfig.model_fields))}) or STAGE.FIELD for one stage's field")
        if not levels:
            raise ValueError(f"factors.{key}: needs at least one level")
        for i, level in enumerate(levels):
            if key == "model" and level not in model_names:
                raise ValueError(f"factors.model[{i}]: '{level}' is not one of models {model_names}")
            elif key == "dataset" and level not in dataset_names:
                raise ValueError(f"factors.dataset[{i}]: '{level}' is not one of datasets {dataset_names}")
            elif key == "prompt":
                if not isinstance(level, str):
                    raise ValueError(f"factors.prompt[{i}]: must be a prompt template (a string)")
                try:
                    if not template_fields(level):
                        raise ValueError("must name at least one field of the rows, e.g. '{input}'")
                except ValueError as exc:
                    raise ValueError(f"factors.prompt[{i}]: {exc}") from None
            elif key not in AXES:
                try:
                    TrainingConfig(**{**self.training.model_dump(), key: level})
                except ValidationError as exc:
                    msg = exc.errors()[0]["msg"]
                    raise ValueError(f"factors.{key}[{i}]: {level!r}: {msg}") from None
        if len(set(map(repr, levels))) != len(levels):
            raise ValueError(f"factors.{key}: levels repeat")

    def _check_naming(self) -> None:
        if self.naming is None:
            return
        try:
            names = set(template_fields(self.naming))
        except ValueError as exc:
            raise ValueError(f"naming: not a valid pattern ({exc})") from None
        available = {factor_field(k) for k in self.swept_factors()} | {"model", "dataset"}
        if "prompt" in self.factors:
            available.add("prompt")
        unknown = names - available
        if unknown:
            raise ValueError(f"naming: placeholder(s) {sorted(unknown)} are not swept factors; "
                             f"available: {sorted(available)}")

    def swept_factors(self) -> list[str]:
        """Training factors that vary (model, dataset and prompt are axes of their own)."""
        return [k for k in self.factors if k not in AXES]

    def model_levels(self) -> list[str]:
        return list(self.factors.get("model", [m.name for m in self.models]))

    def dataset_levels(self) -> list[str]:
        """The runs' datasets: factors.dataset, else every dataset not eval_only; with stages, those no stage names,
        else the last a stage names (the run is evaluated on it)."""
        if "dataset" in self.factors:
            return list(self.factors["dataset"])
        trainable = [d.name for d in self.datasets if not d.eval_only]
        named = [s.dataset for s in self.stages if s.dataset]
        if not named:
            return trainable
        return [n for n in trainable if n not in named] or [named[-1]]

    def prompt_levels(self) -> list[str | None]:
        """Prompt templates swept (factors.prompt), else the one prompt (None: rows bring their own)."""
        return list(self.factors.get("prompt", [self.prompt]))

    def prompt_names(self) -> dict[str, str | None]:
        """Short names of the swept prompt templates (p1, p2, …): run names, plan.md and the report use them."""
        return {f"p{i}": t for i, t in enumerate(self.prompt_levels(), 1)}

    def dataset(self, name: str) -> DatasetSpec:
        return next(d for d in self.datasets if d.name == name)

    def naming_pattern(self) -> str:
        """The run name pattern: the user's, or {model}[_{dataset}][_{prompt}]_<abbrev><value> per swept factor."""
        if self.naming:
            return self.naming
        parts = ["{model}"]
        if len(self.dataset_levels()) > 1:
            parts.append("{dataset}")
        if len(self.prompt_levels()) > 1:
            parts.append("{prompt}")
        for key in self.swept_factors():
            stage_field = split_stage_factor(key)
            label = f"{stage_field[0]}-{FACTOR_ABBREVIATIONS.get(stage_field[1], stage_field[1])}" if stage_field \
                else FACTOR_ABBREVIATIONS.get(key, key)
            parts.append(f"{label}{{{factor_field(key)}}}")
        return "_".join(parts)


def factor_field(key: str) -> str:
    """The naming-pattern placeholder of a factor: 'main.order' -> 'main_order' (a dot is attribute access)."""
    return key.replace(".", "_")


def parse_spec(data: Any, source: str | Path = "<spec>") -> ExperimentSpec:
    return validate_mapping(data, ExperimentSpec, source, "spec")


def load_spec(path: str | Path) -> ExperimentSpec:
    """Read and validate experiment.yaml; raise TunelabError naming the file and field at fault."""
    return load_yaml_model(path, ExperimentSpec, "spec file")


def json_schema() -> dict:
    """JSON Schema of experiment.yaml, for editors."""
    return ExperimentSpec.model_json_schema()
