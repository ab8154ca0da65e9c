"""The sweep's runs grouped into the combinations a search is made for (one per level combination of tune.per),
and a trial's run derived from its combination's run: the trial's learning rate, a budget of its steps."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.forecast.halving import validation_interval
from tunelab.plan.planner import Plan
from tunelab.rundir.config import RUN_FILE, RunConfig, load_run_config
from tunelab.rundir.tuned import TRIAL_PREFIX, combination_runs, trial_dir
from tunelab.spec import TuneSpec


@dataclass(frozen=True)
class Combination:
    """One search: the runs sharing their levels of the `per` factors, and the steps a full run trains."""

    name: str
    levels: dict[str, object]
    runs: tuple[RunConfig, ...]
    steps: int  # the representative run's optimizer steps (the plan's estimate, or max_steps)

    @property
    def run(self) -> RunConfig:
        """The run its trials are derived from (the first: the levels not in `per` are the spec's first ones)."""
        return self.runs[0]


def run_steps(plan: Plan, cfg: RunConfig) -> int:
    """The optimizer steps a run trains: the plan's estimate, else training.max_steps."""
    est = plan.estimates.get(cfg.name)
    steps = est.steps if est is not None and est.steps else (cfg.training.max_steps if cfg.training else None)
    if not steps:
        raise TunelabError(f"{cfg.name}: the plan could not count its steps, so a trial's budget is unknown; set "
                           "training.max_steps", file=plan.spec_path, field="tune.budget")
    return steps


def combinations(plan: Plan, tune: TuneSpec) -> list[Combination]:
    """The fine-tuned runs grouped by their `per` levels, in the plan's order (controls never train: never tuned)."""
    per = tune.per_factors(plan.spec.factors)
    return [Combination(name, {k: runs[0].factors[k] for k in per}, tuple(runs), run_steps(plan, runs[0]))
            for name, runs in combination_runs(plan.spec, plan.runs).items()]


def trial_steps(combo: Combination, budget: float) -> int:
    return max(1, math.floor(budget * combo.steps))


def healed_micro_batch(combo: Combination, experiment_dir: Path) -> tuple[int, int] | None:
    """(micro-batch, accumulation) of the combination's trials that ran out of memory and were retried smaller
    (their run.yaml, attempt > 1): the smallest, so later trials start where the earlier ones fit (None: none was)."""
    healed = []
    for path in trial_dir(experiment_dir, combo.name, 0).parent.glob(f"{TRIAL_PREFIX}*/{RUN_FILE}"):
        try:
            cfg = load_run_config(path)
        except (OSError, ValueError, TunelabError):
            continue
        if cfg.attempt > 1 and cfg.training is not None and combo.run.training is not None \
                and cfg.training.batch_size < combo.run.training.batch_size:
            healed.append((cfg.training.batch_size, cfg.training.gradient_accumulation_steps))
    return min(healed) if healed else None


def trial_config(combo: Combination, experiment_dir: Path, number: int, learning_rate: float,
                 budget: float, micro: tuple[int, int] | None = None) -> RunConfig:
    """Trial `number`'s run: the combination's run at `learning_rate`, stopped after budget x its steps, validated
    often enough for the pruner (forecast/halving.py `validation_interval`: the price counts the same rungs), in its own
    directory; `micro`: the (micro-batch, accumulation) an earlier trial was healed to (healed_micro_batch)."""
    base = combo.run
    assert base.training is not None  # a fine-tuned run
    steps = trial_steps(combo, budget)
    every = validation_interval(base.training.validation_every_steps, steps)
    training = base.training.model_copy(update={
        "learning_rate": learning_rate, "max_steps": steps, "validation_every_steps": every,
        **({"batch_size": micro[0], "gradient_accumulation_steps": micro[1]} if micro else {})})
    return base.model_copy(update={
        "name": f"{combo.name}-trial-{number}", "training": type(training).model_validate(training.model_dump()),
        "directory": str(trial_dir(experiment_dir, combo.name, number)), "estimate": None, "tuned": None})
