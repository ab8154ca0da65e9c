"""The experiment spec (experiment.yaml): what a user writes, validated strictly.

Every mistake is reported with the file, the dotted field path and what was expected, because a
typo found after two hours in a queue costs two hours.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunelab.errors import TunelabError
from tunelab.fsutil import load_yaml

M = TypeVar("M", bound=BaseModel)
SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _check_slug(v: str) -> str:
    if not SLUG.match(v):
        raise ValueError("must be a short name of letters, digits, '.', '_' or '-'")
    return v


# A name that ends up in file and directory names.
Slug = Annotated[str, AfterValidator(_check_slug)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSpec(_Strict):
    """A base model: a short name used in run names and a local Hugging Face model directory."""

    name: Slug = Field(description="Short, filesystem-safe name used in run names, e.g. 'llama1b'.")
    path: str = Field(description="Local HF model directory (relative to the spec file or absolute).")


class DatasetSpec(_Strict):
    """A JSON file with train/validation/test lists of examples."""

    name: Slug = Field(description="Short name used in run names when several datasets are swept.")
    path: str = Field(description="JSON file with 'train', 'validation' and 'test' lists.")
    input_field: str = "input"
    output_field: str = "output"


class TrainingConfig(_Strict):
    """Hyper-parameters of one fine-tuning run. Any of them can be swept as a factor."""

    epochs: int = Field(3, ge=1)
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (debugging).")
    learning_rate: float = Field(2e-4, gt=0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    warmup_steps: int | None = Field(None, ge=0, description="Warm-up in optimizer steps; overrides warmup_ratio.")
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(8, ge=1, description="Micro-batch size per device (examples or packed sequences).")
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_seq_len: int = Field(512, ge=8)
    packing: bool = Field(False, description="Best-fit-decreasing packing, padding-free, examples isolated.")
    lora_rank: int = Field(8, ge=1)
    lora_alpha: float | None = Field(None, gt=0, description="Defaults to 2 x lora_rank.")
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_target_modules: list[str] | Literal["all-linear"] = "all-linear"
    modules_to_save: list[str] = Field(
        default_factory=list,
        description="Modules trained in full next to LoRA, e.g. [embed_tokens, lm_head] for random-init models.",
    )
    validation_every_steps: int | None = Field(None, ge=1, description="Validation loss every N steps; off if unset.")
    logging_steps: int = Field(10, ge=1)
    seed: int = 42
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    gradient_checkpointing: bool = False

    @property
    def effective_lora_alpha(self) -> float:
        return self.lora_alpha if self.lora_alpha is not None else 2.0 * self.lora_rank


class EvalSpec(_Strict):
    """How fine-tuned checkpoints and controls are evaluated (inspect-ai)."""

    task: Literal["exact_match", "includes"] = Field(
        "exact_match", description="exact_match: the stripped answer equals the target; includes: contains it."
    )
    split: Literal["test", "validation"] = "test"
    max_tokens: int = Field(16, ge=1)
    epochs: Literal["last", "all"] = "last"
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N examples.")


_TIME_LIMIT = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")


def _check_time_limit(v: str | None) -> str | None:
    if v is not None and not _TIME_LIMIT.match(v):
        raise ValueError("must be a Slurm time limit: 'MINUTES', 'HH:MM:SS' or 'D-HH:MM:SS'")
    return v


TimeLimit = Annotated[str | None, AfterValidator(_check_time_limit)]


class SlurmSpec(_Strict):
    """Cluster settings for `executor: slurm`; any of them can also come from the user config file
    (~/.config/tunelab/config.yaml or $TUNELAB_CONFIG, under `slurm:`); the spec wins."""

    account: str | None = None
    partition: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gres: str | None = Field(None, description="e.g. 'gpu:a100:1'; default 'gpu:N' from resources.gpus_per_run.")
    cpus_per_task: int | None = Field(None, ge=1)
    mem: str | None = Field(None, pattern=r"^\d+[KMGT]?$", description="e.g. '32G'.")
    time_limit: TimeLimit = Field(None, description="Training job limit; default: the plan's estimate, else 4 h.")
    eval_time_limit: TimeLimit = Field(None, description="Evaluation job limit; default 1 h.")
    modules: list[str] = Field(default_factory=list, description="`module load` these in every job.")
    setup: list[str] = Field(default_factory=list, description="Shell lines run before tunelab, e.g. activating an env.")
    extra_sbatch: list[str] = Field(default_factory=list, description="Extra '#SBATCH' options, e.g. '--exclusive'.")
    max_queued: int = Field(50, ge=2, description="Most of this experiment's jobs pending or running at once.")
    submit_delay_s: float = Field(0.2, ge=0, description="Pause between two sbatch calls.")
    poll_interval_s: float = Field(5.0, gt=0, description="How often --wait and status --watch ask squeue/sacct.")

    @field_validator("extra_sbatch")
    @classmethod
    def _sbatch_lines(cls, v: list[str]) -> list[str]:
        out = []
        for line in v:
            line = line.strip().removeprefix("#SBATCH").strip()
            if not line.startswith("-") or "\n" in line:
                raise ValueError(f"{line!r}: each entry is one sbatch option such as '--exclusive'")
            out.append(line)
        return out


class ResourcesSpec(_Strict):
    executor: Literal["local", "slurm"] = "local"
    gpus_per_run: int = Field(1, ge=0)
    max_retries: int = Field(
        2, ge=0, description="Automatic retries of a run (OOM: halve the micro-batch; timeout/preemption: resume)."
    )
    slurm: SlurmSpec | None = None


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
    prompt: str = Field(description="Prompt template; '{input}' is replaced by the example's input.")
    system_prompt: str | None = None
    chat_template: Literal["auto", "always", "never"] = Field(
        "auto", description="Use the tokenizer's chat template: auto = when the tokenizer has one."
    )
    factors: dict[str, list[Any]] = Field(default_factory=dict)
    controls: bool = Field(True, description="Evaluate each base model without fine-tuning.")
    naming: str | None = Field(None, description="Run name pattern, e.g. '{model}_r{lora_rank}'.")
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)

    @field_validator("prompt")
    @classmethod
    def _prompt_has_input(cls, v: str) -> str:
        try:
            names = {f for _, f, _, _ in string.Formatter().parse(v) if f is not None}
        except ValueError as exc:
            raise ValueError(f"is not a valid template ({exc}); write literal braces as '{{{{' and '}}}}'") from exc
        if "input" not in names:
            raise ValueError("must contain '{input}', where each example's input goes")
        unknown = names - {"input"}
        if unknown:
            raise ValueError(f"has unknown placeholder(s) {sorted(unknown)}; only '{{input}}' is filled in")
        return v

    @model_validator(mode="after")
    def _check_factors_and_names(self) -> "ExperimentSpec":
        model_names = [m.name for m in self.models]
        dataset_names = [d.name for d in self.datasets]
        for label, names in (("models", model_names), ("datasets", dataset_names)):
            dupes = {n for n in names if names.count(n) > 1}
            if dupes:
                raise ValueError(f"{label}: duplicate name(s) {sorted(dupes)}")
        allowed = set(TrainingConfig.model_fields) | {"model", "dataset"}
        for key, levels in self.factors.items():
            if key not in allowed:
                raise ValueError(
                    f"factors.{key}: unknown factor; use 'model', 'dataset' or a training field "
                    f"({', '.join(sorted(TrainingConfig.model_fields))})"
                )
            if not levels:
                raise ValueError(f"factors.{key}: needs at least one level")
            for i, level in enumerate(levels):
                if key == "model" and level not in model_names:
                    raise ValueError(f"factors.model[{i}]: '{level}' is not one of models {model_names}")
                elif key == "dataset" and level not in dataset_names:
                    raise ValueError(f"factors.dataset[{i}]: '{level}' is not one of datasets {dataset_names}")
                elif key not in ("model", "dataset"):
                    try:
                        TrainingConfig(**{**self.training.model_dump(), key: level})
                    except ValidationError as exc:
                        msg = exc.errors()[0]["msg"]
                        raise ValueError(f"factors.{key}[{i}]: {level!r}: {msg}") from None
            if len(set(map(repr, levels))) != len(levels):
                raise ValueError(f"factors.{key}: levels repeat")
        if self.naming is not None:
            try:
                names = {f for _, f, _, _ in string.Formatter().parse(self.naming) if f is not None}
            except ValueError as exc:
                raise ValueError(f"naming: not a valid pattern ({exc})") from None
            unknown = names - (set(self.swept_factors()) | {"model", "dataset"})
            if unknown:
                raise ValueError(
                    f"naming: placeholder(s) {sorted(unknown)} are not swept factors; "
                    f"available: {sorted(set(self.swept_factors()) | {'model', 'dataset'})}"
                )
        return self

    def swept_factors(self) -> list[str]:
        """Training factors that vary (model and dataset are axes of their own)."""
        return [k for k in self.factors if k not in ("model", "dataset")]

    def model_levels(self) -> list[str]:
        return list(self.factors.get("model", [m.name for m in self.models]))

    def dataset_levels(self) -> list[str]:
        return list(self.factors.get("dataset", [d.name for d in self.datasets]))

    def naming_pattern(self) -> str:
        """The run name pattern: the user's, or {model}[_{dataset}]_<abbrev><value> per swept factor."""
        if self.naming:
            return self.naming
        parts = ["{model}"]
        if len(self.dataset_levels()) > 1:
            parts.append("{dataset}")
        for key in self.swept_factors():
            parts.append(f"{FACTOR_ABBREVIATIONS.get(key, key)}{{{key}}}")
        return "_".join(parts)


def _loc_to_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


_FIELD_PREFIX = re.compile(r"^([A-Za-z_][\w.\[\]]*): (.*)$", re.S)


def format_validation_error(exc: ValidationError, file: str | Path) -> TunelabError:
    """Turn pydantic's error list into one message: 'file: field.path: what was expected'."""
    lines = []
    for err in exc.errors():
        field = _loc_to_path(err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see `tunelab schema` for the allowed keys)"
        elif "input" in err and err["type"] not in ("missing",) and not isinstance(err["input"], dict):
            msg = f"{msg} (got {err['input']!r})"
        # Cross-field checks raise 'field.path: message' from the top level: lift the path out.
        lifted = _FIELD_PREFIX.match(msg) if field == "(top level)" else None
        if lifted:
            field, msg = lifted.group(1), lifted.group(2)
        lines.append(f"{file}: {field}: {msg}")
    return TunelabError("\n".join(lines))


def load_yaml_model(path: str | Path, model: type[M], what: str) -> M:
    """Read a YAML file into a pydantic model; every failure names the file (and line or field)."""
    path = Path(path)
    if not path.is_file():
        raise TunelabError(f"{what} not found", file=path)
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise TunelabError(f"{where}not valid YAML: {problem}", file=path) from None
    return validate_mapping(data, model, path, what)


def validate_mapping(data: Any, model: type[M], source: str | Path, what: str) -> M:
    if not isinstance(data, dict):
        raise TunelabError(f"the {what} must be a YAML mapping (key: value), not a list or a scalar", file=source)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise format_validation_error(exc, source) from None


def parse_spec(data: Any, source: str | Path = "<spec>") -> ExperimentSpec:
    return validate_mapping(data, ExperimentSpec, source, "spec")


def load_spec(path: str | Path) -> ExperimentSpec:
    """Read and validate experiment.yaml; raise TunelabError naming the file and field at fault."""
    return load_yaml_model(path, ExperimentSpec, "spec file")


def resolve_path(base_dir: Path, value: str) -> Path:
    """Paths in a spec are relative to the spec file, so an experiment directory can be moved whole."""
    p = Path(value).expanduser()
    return (p if p.is_absolute() else (base_dir / p)).resolve()


def json_schema() -> dict:
    """JSON Schema of experiment.yaml, for editors."""
    return ExperimentSpec.model_json_schema()
