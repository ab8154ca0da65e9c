"""What an evaluation of several runs has to do: every target × task in the order results are returned, with each
finished task's scores read back (skipped unless forced, as evaluate_run skips it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.evaluate.scores import SCORES_FILE, TaskScores, read_task_scores, task_dir
from tunelab.evaluate.targets import Target, select_targets
from tunelab.evaluate.usertasks import resolve_user_task
from tunelab.rundir.config import RunConfig
from tunelab.spec import EpochChoice, TaskSpec

ItemKey = tuple[str, str, str]  # (run, target label, task)


@dataclass(frozen=True)
class WorkItem:
    """One task on one target."""

    cfg: RunConfig
    target: Target
    spec: TaskSpec

    @property
    def key(self) -> ItemKey:
        return (self.cfg.name, self.target.label, self.spec.name)

    @property
    def out_dir(self) -> Path:
        return task_dir(self.cfg.run_dir, self.target.label, self.spec.name)

    def where(self) -> str:
        return f"{self.cfg.name} {self.target.label} {self.spec.name}"


@dataclass(frozen=True)
class TargetWork:
    """One target (a set of weights) and its tasks still to evaluate."""

    cfg: RunConfig
    target: Target
    items: tuple[WorkItem, ...]

    def where(self) -> str:
        return f"{self.cfg.name} {self.target.label}"


Outcome = TaskScores | TunelabError  # what became of one target × task
Report = Callable[[WorkItem, Outcome], None]  # called as each target × task ends


@dataclass
class Work:
    order: list[WorkItem] = field(default_factory=list)  # every target × task, as results are returned
    done: dict[ItemKey, TaskScores] = field(default_factory=dict)  # scores read back (not forced)
    pending: list[TargetWork] = field(default_factory=list)  # targets with tasks to evaluate, in order


def plan_work(cfgs: list[RunConfig], epochs: EpochChoice | None, force: bool, tasks: list[str] | None) -> Work:
    """The targets × tasks of these runs (fine-tuned runs: `epochs`, default each run's eval.epochs). Every
    run's base model and task files are checked first, before anything loads or is written."""
    from tunelab.evaluate.runner import chosen_tasks

    work = Work()
    for cfg in cfgs:
        base = Path(cfg.model.path)
        if not (base / "config.json").is_file():
            raise TunelabError("base model directory not found (no config.json)", file=base)
        specs = chosen_tasks(cfg, tasks)
        for spec in specs:  # a broken task file fails here
            if spec.file:
                resolve_user_task(spec)
        for target in select_targets(cfg, epochs if cfg.kind == "finetune" else None):
            todo = []
            for item in (WorkItem(cfg, target, spec) for spec in specs):
                work.order.append(item)
                existing = None if force else read_task_scores(item.out_dir / SCORES_FILE)
                if existing is not None:
                    work.done[item.key] = existing
                else:
                    todo.append(item)
            if todo:
                work.pending.append(TargetWork(cfg, target, tuple(todo)))
    return work


def results_by_run(work: Work, outcomes: dict[ItemKey, TaskScores]) -> dict[str, list[TaskScores]]:
    """Every run's scores, fresh or read back, by target then task (what evaluate_run returns per run)."""
    out: dict[str, list[TaskScores]] = {}
    for item in work.order:
        scores = outcomes.get(item.key) or work.done.get(item.key)
        out.setdefault(item.cfg.name, [])
        if scores is not None:
            out[item.cfg.name].append(scores)
    return out
