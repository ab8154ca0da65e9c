"""The fully resolved per-run config (run.yaml): the single source of truth for one run.

The job script only calls `python -m tunelab.train.job run.yaml`; training and evaluation read everything from
here. A retry writes a new run.yaml (attempt + 1); nothing ever patches it with regexes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from tunelab.fsutil import atomic_write_yaml
from tunelab.rundir.estimate import RunEstimate
from tunelab.spec import (
    DEFAULT_TEMPLATE_DATE,
    DatasetSpec,
    EvalSpec,
    ModelSpec,
    ResourcesSpec,
    TrainingConfig,
    _Strict,
    load_yaml_model,
)

RUN_FILE = "run.yaml"
RunKind = Literal["finetune", "control", "eval_only"]
KIND_DIRS: dict[str, str] = {"finetune": "runs", "control": "controls", "eval_only": "eval_only"}
QUANTIZE_FIELD = "training.quantize"


class StageConfig(_Strict):
    """One stage of a staged run, resolved: its dataset (paths absolute) and its whole training."""

    name: str
    dataset: DatasetSpec
    optimizer: Literal["fresh", "carried"] = "fresh"
    training: TrainingConfig


class RunConfig(_Strict):
    name: str
    kind: RunKind
    experiment: str
    experiment_dir: str = Field(description="Absolute path of the experiment directory.")
    model: ModelSpec = Field(description="Base model; path is absolute.")
    dataset: DatasetSpec = Field(description="Dataset; paths are absolute.")
    eval_datasets: dict[str, DatasetSpec] = Field(
        default_factory=dict, description="Other datasets that eval tasks name (paths absolute).")
    prompt: str | None = Field(None, description="Prompt template (None: rows bring their own prompt).")
    system_prompt: str | None = None
    chat_template: Literal["auto", "always", "never"] = "auto"
    chat_template_date: str = DEFAULT_TEMPLATE_DATE
    checkpoint: str | None = Field(
        None, description="eval_only: the adapter or model directory evaluated (absolute).")
    factors: dict[str, Any] = Field(default_factory=dict)
    training: TrainingConfig | None = Field(None, description="None for controls (evaluation only).")
    stages: list[StageConfig] = Field(
        default_factory=list, description="A staged run's stages in order (train/stages.py); empty: one stage, "
        "the run's own dataset and training.")
    eval: EvalSpec = Field(default_factory=EvalSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    attempt: int = Field(1, ge=1)
    directory: str | None = Field(
        None, exclude_if=lambda v: v is None, description="The run's directory when it is not the experiment's "
        "<kind dir>/<name>: a tuning trial's <experiment>/tune/<combination>/trial-N (absolute).")
    tuned: str | None = Field(
        None, exclude_if=lambda v: v is None, description="Where training.learning_rate came from when `tunelab "
        "tune` chose it, e.g. 'tuned: best of 8 trials, val loss 0.412 at 3.2e-4, trial 5'.")
    default_lr_of: str | None = Field(
        None, exclude_if=lambda v: v is None, description="The tuned run this one is the default-learning-rate "
        "twin of (tune.compare_default): it trains at the spec's training.learning_rate and is never tuned.")
    estimate: RunEstimate | None = Field(
        None, description="The planner's estimate at scaffold time (steps, seconds, source, slurm_time_limit); "
        "informational, and the SLURM time limit when resources.slurm.time_limit is unset.")

    @property
    def run_dir(self) -> Path:
        if self.directory is not None:
            return Path(self.directory)
        return Path(self.experiment_dir) / KIND_DIRS[self.kind] / self.name

    def stage_config(self, index: int) -> RunConfig:
        """The run as its stage `index` trains it: the stage's dataset and training, no stages of its own."""
        stage = self.stages[index]
        return self.model_copy(update={"dataset": stage.dataset, "training": stage.training, "stages": []})

    def trainings(self) -> list[TrainingConfig]:
        """Every training this run does: its stages', or its own."""
        if self.stages:
            return [s.training for s in self.stages]
        return [self.training] if self.training is not None else []

    def check_quantize(self, cuda: bool, spec_path: Path) -> None:
        """Refuse a quantized run (QLoRA) where its jobs have no GPU (`cuda` False: none named for them) or
        bitsandbytes is missing: at plan time, with the field named, rather than as a traceback in a job."""
        problem = self.training.quantize_problem(cuda) if self.training is not None else None
        if problem:
            from tunelab.errors import TunelabError

            raise TunelabError(f"{self.name}: {problem}", file=spec_path, field=QUANTIZE_FIELD)

    def dataset_named(self, name: str | None) -> DatasetSpec:
        """The run's own dataset (None or its name) or one an eval task names."""
        if name is None or name == self.dataset.name:
            return self.dataset
        return self.eval_datasets[name]


def save_run_config(cfg: RunConfig, path: str | Path | None = None, durable: bool = True) -> Path:
    path = Path(path) if path else cfg.run_dir / RUN_FILE
    return atomic_write_yaml(path, cfg.model_dump(mode="json"), durable)


def load_run_config(path: str | Path) -> RunConfig:
    path = Path(path)
    if path.is_dir():
        path = path / RUN_FILE
    return load_yaml_model(path, RunConfig, "run config")
