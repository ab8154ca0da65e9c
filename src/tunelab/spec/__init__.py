"""The experiment spec (experiment.yaml) and its parts; every public name is importable from here."""

from tunelab.spec.base import (
    SLUG,
    Slug,
    _Strict,
    format_validation_error,
    load_yaml_model,
    resolve_path,
    validate_mapping,
)
from tunelab.spec.evaluation import BUILTIN_TASKS, EpochChoice, EvalOnlySpec, EvalSpec, TaskSpec
from tunelab.spec.experiment import (
    AXES,
    DEFAULT_TEMPLATE_DATE,
    FACTOR_ABBREVIATIONS,
    SPLIT_NAMES,
    DatasetSpec,
    ExperimentSpec,
    ModelSpec,
    RowFormat,
    SplitFractions,
    factor_field,
    json_schema,
    load_spec,
    parse_spec,
    template_fields,
)
from tunelab.spec.resources import ExecutorKind, ResourcesSpec, SlurmSpec, Strategy
from tunelab.spec.stages import StageSpec
from tunelab.spec.training import TrainingConfig
from tunelab.spec.tune import VAL_LOSS, RateRange, TuneSpec

__all__ = [
    "AXES", "BUILTIN_TASKS", "DEFAULT_TEMPLATE_DATE", "FACTOR_ABBREVIATIONS", "SLUG", "SPLIT_NAMES", "DatasetSpec",
    "EpochChoice", "EvalOnlySpec", "EvalSpec", "ExecutorKind", "ExperimentSpec", "ModelSpec", "ResourcesSpec", "RowFormat",
    "SlurmSpec", "Slug", "SplitFractions", "StageSpec", "Strategy", "TaskSpec", "TrainingConfig", "TuneSpec", "RateRange", "VAL_LOSS", "_Strict", "factor_field", "format_validation_error",
    "json_schema", "load_spec", "load_yaml_model", "parse_spec", "resolve_path", "template_fields",
    "validate_mapping",
]
