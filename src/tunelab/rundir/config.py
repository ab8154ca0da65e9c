"""The fully resolved per-run config (run.yaml): the single source of truth for one run.

The job script only calls `python -m tunelab.train.job run.yaml`; training and evaluation read everything from
here. A retry writes a new run.yaml (attempt + 1); nothing ever patches it with regexes.

The paths in run.yaml are absolute, as scaffold wrote them; where the file is read decides where the run is: every
load places the run in the directory its run.yaml sits in (`RunConfig.located`), so an experiment directory copied
or moved whole runs in place, and a run directory moved out of its experiment's layout is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from tunelab.errors import TunelabError
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


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested config → {"training.learning_rate": "0.002", ...}; lists as JSON; None left out."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif data is not None:
        out[prefix] = json.dumps(data) if isinstance(data, (list, tuple)) else str(data)
    return out


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
    experiment_dir: str = Field(description="Absolute path of the experiment directory (where it was scaffolded; a "
                                "load replaces it with where the run.yaml is: `located`).")
    model: ModelSpec = Field(description="Base model; path is absolute.")
    dataset: DatasetSpec = Field(description="Dataset; paths are absolute.")
    eval_datasets: dict[str, DatasetSpec] = Field(
        default_factory=dict, description="Other datasets that eval tasks name (paths absolute).")
    prompt: str | None = Field(None, description="Prompt template (None: rows bring their own prompt).")
    system_prompt: str | None = None
    chat_template: Literal["auto", "always", "never"] = "auto"
    chat_template_date: str = DEFAULT_TEMPLATE_DATE
    checkpoint: str | None = Field(None, description="eval_only: the adapter or model directory evaluated (absolute).")
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
    trial: int | None = Field(
        None, exclude_if=lambda v: v is None, description="A learning-rate search's trial number (`tunelab tune`): "
        "no history records a trial, so its job skips what only later plans read (the step-cost calibration).")
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

    def located(self, where: Path) -> RunConfig:
        """This run placed where its run.yaml is (`where`: the file's directory). Unmoved: itself. Its experiment
        copied or moved whole: every path under the recorded experiment directory (the run's directory, its
        data split records, a dataset or checkpoint kept inside it) rebased onto the new one, so nothing the run
        writes or reads lands in the old place. A run directory not at its place in an experiment's layout
        (<experiment>/runs/<name>, or a trial's tune/<combination>/trial-N) is refused in one line."""
        here = where if where.is_absolute() else where.absolute()
        recorded = self.run_dir
        if recorded == here or recorded.resolve() == here.resolve():
            return self
        old = Path(self.experiment_dir)
        try:
            layout = recorded.relative_to(old).parts
        except ValueError:
            layout = ()
        if not layout or here.parts[-len(layout):] != layout:
            raise TunelabError(
                f"run '{self.name}' belongs at <experiment>/{'/'.join(layout) or self.name} (scaffolded in {old}), "
                f"but its run.yaml is in {here}: move or copy the whole experiment directory, or run `tunelab "
                "scaffold` again to write the run where it is", file=here / RUN_FILE)
        new = here.parents[len(layout) - 1]
        return RunConfig.model_validate(_rebased(self.model_dump(mode="json"), str(old), str(new)))

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
            raise TunelabError(f"{self.name}: {problem}", file=spec_path, field=QUANTIZE_FIELD)

    def dataset_named(self, name: str | None) -> DatasetSpec:
        """The run's own dataset (None or its name) or one an eval task names."""
        return self.dataset if name is None or name == self.dataset.name else self.eval_datasets[name]


def _rebased(value: Any, old: str, new: str) -> Any:
    """`value` (run.yaml's data) with every path that is `old` or lies under it moved under `new`."""
    if isinstance(value, dict):
        return {k: _rebased(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_rebased(v, old, new) for v in value]
    if isinstance(value, str) and (value == old or value.startswith(old + os.sep)):
        return new + value[len(old):]
    return value


def save_run_config(cfg: RunConfig, path: str | Path | None = None, durable: bool = True) -> Path:
    path = Path(path) if path else cfg.run_dir / RUN_FILE
    return atomic_write_yaml(path, cfg.model_dump(mode="json"), durable)


def load_run_config(path: str | Path) -> RunConfig:
    path = Path(path)
    if path.is_dir():
        path = path / RUN_FILE
    return load_yaml_model(path, RunConfig, "run config").located(path.parent)
