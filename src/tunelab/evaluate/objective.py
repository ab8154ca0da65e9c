"""What a learning-rate search judges a trial by (`tune.objective`): its last validation loss, or one eval task's metric
on its last checkpoint — resolved once, so the search, the trials' jobs and the report name the same. Optuna minimises:
a higher-is-better metric is told negated (`told`) and read back as itself (`value_of`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunelab.evaluate.kinds import LOWER_IS_BETTER
from tunelab.rundir.scores import read_scores
from tunelab.spec import VAL_LOSS
from tunelab.spec.evaluation import EvalSpec
from tunelab.spec.tune import objective_task

LOWER_OBJECTIVES = LOWER_IS_BETTER | {VAL_LOSS, "stderr"}


@dataclass(frozen=True)
class Objective:
    """`metric` of `task` (None: the validation loss training logs); `lower_is_better` as the report reads it."""

    metric: str
    task: str | None = None

    @classmethod
    def of(cls, objective: str, evaluation: EvalSpec) -> Objective:
        """tune.objective resolved: 'val_loss', 'TASK/METRIC', or a bare METRIC of the first task that reports it
        (the spec's task order). The spec was validated (spec/tune.py `check_tune`): the name exists."""
        if objective == VAL_LOSS:
            return cls(VAL_LOSS)
        task = objective_task(objective, evaluation)
        if task is None:
            raise ValueError(f"tune.objective: no eval task reports '{objective}'")
        return cls(objective.rpartition("/")[2], task)

    @classmethod
    def parse(cls, name: str) -> Objective:
        """Back from `name` (tune/best.json's `objective`)."""
        task, sep, metric = name.partition("/")
        return cls(metric, task) if sep else cls(name)

    @property
    def name(self) -> str:
        """'val_loss' or 'TASK/METRIC' (what tune/best.json records)."""
        return self.metric if self.task is None else f"{self.task}/{self.metric}"

    @property
    def evaluated(self) -> bool:
        """Whether a trial is evaluated (an eval task's metric) before it can be judged."""
        return self.task is not None

    @property
    def lower_is_better(self) -> bool:
        return self.metric in LOWER_OBJECTIVES

    @property
    def words(self) -> str:
        """How plan, status and the report name it: 'val loss', 'exact_match accuracy'."""
        return "val loss" if self.task is None else f"{self.task} {self.metric}"

    def told(self, value: float) -> float:
        """What Optuna is told (it minimises)."""
        return value if self.lower_is_better else -value

    def value_of(self, told: float) -> float:
        """The objective's own value from what Optuna was told."""
        return told if self.lower_is_better else -told

    def read(self, run_dir: str | Path) -> float | None:
        """The metric on the trial's last evaluated checkpoint (None: not evaluated, or undefined there)."""
        scores = [s for s in read_scores(run_dir) if s.task == self.task]
        return scores[-1].metrics.get(self.metric) if scores else None
