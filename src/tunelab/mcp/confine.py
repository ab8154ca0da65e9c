"""Paths named inside a spec or a run.yaml held to the workspace like path arguments: one outside the root (`../`,
absolute, a link out) is refused before anything reads it, naming the file and field. Likewise the fields that put shell
lines into job scripts, unless the server was started with `--allow-job-shell`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tunelab.errors import TunelabError
from tunelab.mcp.paths import Workspace

if TYPE_CHECKING:
    from tunelab.rundir.config import RunConfig
    from tunelab.spec import DatasetSpec, EvalSpec, ExperimentSpec, ResourcesSpec

# resources.slurm fields whose text a job script runs or obeys: shell lines, module names, sbatch options
JOB_SHELL_FIELDS = ("setup", "modules", "extra_sbatch")


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


def check_job_shell(ws: Workspace, resources: ResourcesSpec, file: Path) -> None:
    """Refused unless the server was started with --allow-job-shell: a spec's lines a job script would run."""
    if ws.allow_job_shell or resources.slurm is None:
        return
    for name in JOB_SHELL_FIELDS:
        if getattr(resources.slurm, name):
            raise TunelabError("puts lines into job scripts, which this server does not run: keep them in your "
                               "user config's slurm: section, or start `tunelab mcp --allow-job-shell`",
                               file=file, field=f"resources.slurm.{name}")


def confine_spec(ws: Workspace, path: Path) -> None:
    """experiment.yaml or a run.yaml: every path it names, and no job-script lines unless allowed."""
    from tunelab.rundir.config import RUN_FILE, load_run_config
    from tunelab.spec import load_spec

    if path.name == RUN_FILE or (path / RUN_FILE).is_file():
        run_file = path if path.name == RUN_FILE else path / RUN_FILE
        cfg = load_run_config(run_file)
        check(ws, run_paths(cfg), run_file)
        check_job_shell(ws, cfg.resources, run_file)
    else:
        spec = load_spec(path)
        check(ws, spec_paths(spec), path)
        check_job_shell(ws, spec.resources, path)


def confine_experiment(ws: Workspace, experiment_dir: Path) -> None:
    """Every run.yaml of a scaffolded experiment: a run trained or evaluated reads only inside the root."""
    from tunelab.rundir.config import RUN_FILE
    from tunelab.rundir.experiment import load_runs

    for cfg in load_runs(experiment_dir):
        check(ws, run_paths(cfg), cfg.run_dir / RUN_FILE)
        check_job_shell(ws, cfg.resources, cfg.run_dir / RUN_FILE)
