"""Paths named inside a spec or a run.yaml (models, datasets, task files, graders, eval-only checkpoints) held
to the workspace like path arguments: a spec handed to the server whose model is `../../etc`, an absolute
path or a link out of the root is refused before anything reads it, the error naming the file and field."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from tunelab.mcp.paths import Workspace

if TYPE_CHECKING:
    from tunelab.rundir.config import RunConfig
    from tunelab.spec import DatasetSpec, EvalSpec, ExperimentSpec


@dataclass(frozen=True)
class Named:
    """A path a spec names: its field, its text, and whether it is a model (readable in the model stores)."""

    field: str
    value: str
    model: bool = False


def dataset_paths(ds: DatasetSpec, field: str) -> Iterator[Named]:
    for split, value in ds.split_files().items():
        yield Named(f"{field}.path" if split == "*" else f"{field}.{split}", value)


def eval_paths(ev: EvalSpec) -> Iterator[Named]:
    for j, task in enumerate(ev.tasks):
        if task.file:
            yield Named(f"eval.tasks[{j}].file", task.file)
        if task.grader is not None and not isinstance(task.grader, str):
            yield Named(f"eval.tasks[{j}].grader.path", task.grader.path, model=True)


def spec_paths(spec: ExperimentSpec) -> Iterator[Named]:
    """Every path experiment.yaml names, with its field."""
    for i, m in enumerate(spec.models):
        yield Named(f"models[{i}].path", m.path, model=True)
    for i, ds in enumerate(spec.datasets):
        yield from dataset_paths(ds, f"datasets[{i}]")
    yield from eval_paths(spec.eval)
    for i, e in enumerate(spec.eval_only):
        yield Named(f"eval_only[{i}].path", e.path, model=True)


def run_paths(cfg: RunConfig) -> Iterator[Named]:
    """Every path a run.yaml names (absolute, as scaffold wrote them), with its field."""
    yield Named("model.path", cfg.model.path, model=True)
    yield from dataset_paths(cfg.dataset, "dataset")
    for name, ds in cfg.eval_datasets.items():
        yield from dataset_paths(ds, f"eval_datasets.{name}")
    for i, stage in enumerate(cfg.stages):
        yield from dataset_paths(stage.dataset, f"stages[{i}].dataset")
    if cfg.checkpoint:
        yield Named("checkpoint", cfg.checkpoint, model=True)
    yield from eval_paths(cfg.eval)


def check(ws: Workspace, named: Iterator[Named], file: Path) -> None:
    """Each path, relative to the file's directory, inside the root (a model: or a model store), else refused."""
    for n in named:
        ws.inside(n.value, n.field, readable_outside=n.model, base=file.parent, file=file)


def confine_spec(ws: Workspace, path: Path) -> None:
    """experiment.yaml, or a run.yaml (a file, or a run directory holding one): every path it names."""
    from tunelab.rundir.config import RUN_FILE, load_run_config
    from tunelab.spec import load_spec

    if path.name == RUN_FILE or (path / RUN_FILE).is_file():
        run_file = path if path.name == RUN_FILE else path / RUN_FILE
        check(ws, run_paths(load_run_config(run_file)), run_file)
    else:
        check(ws, spec_paths(load_spec(path)), path)


def confine_experiment(ws: Workspace, experiment_dir: Path) -> None:
    """Every run.yaml of a scaffolded experiment: a run trained or evaluated reads only inside the root."""
    from tunelab.rundir.config import RUN_FILE
    from tunelab.rundir.experiment import load_runs

    for cfg in load_runs(experiment_dir):
        check(ws, run_paths(cfg), cfg.run_dir / RUN_FILE)
