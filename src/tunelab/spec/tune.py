"""The spec's `tune:` block: a learning-rate search per combination of factor levels, so each level of a comparison
trains at a rate that suits it rather than at one default that suits some. What it names of the rest of the spec is
checked by `check_tune` with the whole spec at hand."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from tunelab.spec.base import _Strict
from tunelab.spec.evaluation import EvalSpec

VAL_LOSS = "val_loss"
# What each built-in task reports (evaluate/tasks.py's scorers; `choice` adds roc_auc with two options).
BUILTIN_METRICS: dict[str, tuple[str, ...]] = {
    "exact_match": ("accuracy", "stderr"),
    "includes": ("accuracy", "stderr"),
    "choice": ("accuracy", "balanced_accuracy", "macro_f1", "ece", "brier", "roc_auc"),
    "numeric": ("mae", "rmse", "r2", "parse_rate"),
}


class RateRange(_Strict):
    """The learning rates a search may try: [low, high], sampled on a log scale when `log` (the usual for rates)."""

    low: float = Field(description="The smallest rate tried.")
    high: float = Field(description="The largest rate tried.")
    log: bool = Field(True, description="Sample on a log scale (low must then be above 0).")

    @model_validator(mode="after")
    def _ordered(self) -> RateRange:
        if self.low >= self.high:
            raise ValueError(f"low: {self.low:g} must be below high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"low: {self.low:g} must be above 0 on a log scale (log: true)")
        return self


class TuneSpec(_Strict):
    """`tune:`: one learning-rate search per combination of the `per` factors' levels, each trial a real run
    trained for `budget` of the run's steps; the sweep's runs then train at their combination's best rate.
    Controls are never tuned (they do not train). `tunelab tune` runs the search; `tunelab run` runs it first for
    the runs it is about to train whose rate no search chose yet (and `run --dry-run`, which can run none, refuses),
    because a run trained at the spec's default rate would make a comparison look tuned that is not: the report
    states each combination's rate and whether a search chose it."""

    learning_rate: RateRange = Field(description="The range searched, e.g. {low: 1.0e-5, high: 3.0e-3, log: true}.")
    per: list[str] | None = Field(
        None, description="The factors whose level combinations each get a search of their own (default: every "
        "factor of the sweep; [] : one search for the whole sweep).")
    trials: int = Field(8, ge=1, description="Trials per combination.")
    budget: float = Field(0.25, gt=0, le=1, description="A trial trains at most this fraction of the run's steps.")
    objective: str = Field(VAL_LOSS, description="val_loss (the last validation loss, lower is better) or an eval "
                           "task's metric: METRIC or TASK/METRIC (each trial that trains its whole budget is then "
                           "evaluated on that task by a job of its own; accuracy-like metrics are chosen highest, "
                           "errors lowest).")
    seed: int | None = Field(None, description="The sampler's seed (default: training.seed).")
    compare_default: bool = Field(
        True, description="Also train each tuned run's twin at training.learning_rate (`RUN_lr-default`, never "
        "tuned), so the report can say whether each finding holds at the tuned rates and at the one default.")

    def sampler_seed(self, training_seed: int) -> int:
        """The seed the search's sampler takes: the block's own, else the spec's training seed."""
        return self.seed if self.seed is not None else training_seed

    def per_factors(self, factors: dict[str, Any]) -> list[str]:
        """The factors a search is made per: `per`, else every factor of the sweep (in the spec's order)."""
        return list(self.per) if self.per is not None else list(factors)


def combination_name(levels: dict[str, object], per: list[str]) -> str:
    """A combination's name in directories and tune/best.json: its levels of the `per` factors ('all' when per is
    empty), e.g. 'tiny_lora_rank-4'. Plan, tune and scaffold name a run's combination by this one rule."""
    parts = [f"{levels[k]}" if k in ("model", "dataset", "prompt") else f"{k.replace('.', '_')}-{levels[k]}"
             for k in per]
    name = "_".join(parts) or "all"
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in name)


def objective_choices(evaluation: EvalSpec) -> set[str]:
    """The objectives a spec's evaluation produces: val_loss, each built-in task's metrics (bare and as TASK/METRIC)."""
    out = {VAL_LOSS}
    for task in evaluation.resolved_tasks():
        for metric in BUILTIN_METRICS.get(task.builtin or "", ()):
            out |= {metric, f"{task.name}/{metric}"}
    return out


def objective_task(objective: str, evaluation: EvalSpec) -> str | None:
    """The eval task an objective is a metric of: TASK of 'TASK/METRIC', the first task (in the spec's order) that
    reports a bare METRIC, None for val_loss (or a name no task reports: `check_tune` refuses it)."""
    if objective == VAL_LOSS:
        return None
    task, sep, _ = objective.partition("/")
    if sep:
        return task
    return next((t.name for t in evaluation.resolved_tasks() if objective in BUILTIN_METRICS.get(t.builtin or "", ())),
                None)


def _objective_problem(evaluation: EvalSpec, objective: str) -> str | None:
    """Why the objective names nothing the spec produces (None: it does). A task file's metrics are known only once
    it ran: TASK/anything of a file task is accepted."""
    if objective in objective_choices(evaluation):
        return None
    task, sep, _ = objective.partition("/")
    if sep and any(t.name == task and t.file for t in evaluation.resolved_tasks()):
        return None
    return (f"tune.objective: '{objective}' is neither val_loss nor a metric an eval task produces; "
            f"choose from {sorted(objective_choices(evaluation))}")


def check_tune(tune: TuneSpec | None, factors: dict[str, Any], evaluation: EvalSpec, staged: bool) -> None:
    """The block against the rest of the spec (its factors, evaluation, whether runs are staged): one ValueError
    'tune.FIELD: …' naming the field at fault."""
    if tune is None:
        return
    if "learning_rate" in factors:
        raise ValueError("tune.learning_rate: learning_rate is a factor of the sweep; a swept value cannot also be "
                         "tuned (remove it from factors or from tune)")
    if staged:
        raise ValueError("tune.learning_rate: a staged run has a learning rate per stage; tune supports runs of "
                         "one stage")
    known = set(factors) | {"model", "dataset"}  # every run has a model and a dataset level
    for i, name in enumerate(tune.per or []):
        if name not in known:
            raise ValueError(f"tune.per[{i}]: '{name}' is not a factor of the sweep; factors: {sorted(known)}")
    if len(set(tune.per or [])) != len(tune.per or []):
        raise ValueError("tune.per: a factor is named twice")
    problem = _objective_problem(evaluation, tune.objective)
    if problem:
        raise ValueError(problem)
