"""What the experiment planned, against what its directories hold: every run the spec designs and every evaluation each
should have (the `eval.epochs` checkpoints × `eval.tasks`, on every sample of the task's split). A run counts as
evaluated only when nothing planned is missing, so no ✓ stands over checkpoints, tasks or samples still to come."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunelab.data.splits import DATA_DIR, PROVENANCE_FILE
from tunelab.errors import TunelabError
from tunelab.fsutil import read_json
from tunelab.plan.design import expand_runs
from tunelab.rundir.config import KIND_DIRS, RunConfig
from tunelab.rundir.stages import StageRecord
from tunelab.spec import ExperimentSpec

BASE, CHECKPOINT = "base", "checkpoint"  # evaluate/targets.py's labels of a control's and an eval-only run's target


@dataclass(frozen=True)
class PlannedEval:
    """One evaluation a run should have: a target (its label under eval/) × a task, and its samples."""

    label: str
    task: str
    samples: int | None  # the task split's rows (capped by limit); None: not known (a task file's own dataset)


@dataclass(frozen=True)
class EvalGap:
    """A planned evaluation missing (`samples` None) or run on fewer samples than planned."""

    label: str
    task: str
    samples: int | None
    planned: int | None

    @property
    def text(self) -> str:
        if self.samples is None:
            return f"{self.label} × {self.task} not evaluated"
        return f"{self.label} × {self.task} on {self.samples} of {self.planned} samples"


def split_counts(experiment_dir: Path) -> dict[tuple[str, str], int]:
    """(dataset, split) -> rows, from data/provenance.json (scaffold's record of every data file; {} without)."""
    record = read_json(experiment_dir / DATA_DIR / PROVENANCE_FILE, default={})
    out = {}
    for name, info in (record.items() if isinstance(record, dict) else []):
        for split, n in (info.get("counts") or {}).items() if isinstance(info, dict) else []:
            if isinstance(n, int):
                out[(name, split)] = n
    return out


def planned_epochs_evaluated(cfg: RunConfig, planned: int | None, saved: list[int], stages: list[StageRecord]
                             ) -> list[int]:
    """The epochs `eval.epochs` names over those the run should save (with max_steps: those it saved)."""
    epochs = list(range(planned)) if planned else sorted(saved)
    if not epochs:
        return []
    choice = cfg.eval.epochs
    if choice == "last":
        return [epochs[-1]]
    if choice == "all":
        return epochs
    if choice == "stages":
        ends = {max(r.epochs) for r in stages if r.epochs}
        return sorted(ends & set(epochs)) or [epochs[-1]]
    return sorted(set(choice))


def planned_evals(cfg: RunConfig, epochs: list[int], counts: dict[tuple[str, str], int]) -> list[PlannedEval]:
    """Every target × task the run should have a scores.json for, with the samples each should hold."""
    labels = [BASE] if cfg.kind == "control" else [CHECKPOINT] if cfg.kind == "eval_only" else \
        [f"epoch_{e}" for e in epochs]
    out = []
    for task in cfg.eval.resolved_tasks():
        samples = None
        if task.builtin:
            try:
                rows = counts.get((cfg.dataset_named(task.dataset).name, task.split))
            except KeyError:
                rows = None
            limit = task.limit or cfg.eval.limit
            samples = min(rows, limit) if rows is not None and limit else rows
        out += [PlannedEval(label, task.name, samples) for label in labels]
    return out


@dataclass(frozen=True)
class AbsentRun:
    """A run the spec designs whose directory (and run.yaml) is not in the experiment."""

    name: str
    kind: str  # finetune | control | eval_only

    @property
    def rel_dir(self) -> str:
        return f"{KIND_DIRS[self.kind]}/{self.name}"


def absent_runs(spec: ExperimentSpec, experiment_dir: Path, present: set[str], adopted: bool
                ) -> tuple[list[AbsentRun], str | None]:
    """The designed runs with no directory here, or ([], why not) where the design cannot be expanded now. An adopted
    experiment's runs are named by their sources: only its controls and eval-only runs are checked."""
    try:
        designed = expand_runs(spec, experiment_dir, experiment_dir)
    except TunelabError as exc:
        return [], str(exc)
    return [AbsentRun(r.name, r.kind) for r in designed
            if r.name not in present and not (adopted and r.kind == "finetune")], None
