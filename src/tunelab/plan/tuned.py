"""The sweep's runs at their combination's tuned learning rate: what `tunelab tune` chose (tune/best.json) goes into
each run's training with its source, so run.yaml says where the rate came from. A spec without `tune:`, or a
combination not searched yet, keeps the spec's rate."""

from __future__ import annotations

from pathlib import Path

from tunelab.rundir.config import RunConfig
from tunelab.rundir.tuned import read_best
from tunelab.spec import ExperimentSpec
from tunelab.spec.tune import combination_name


def combination_runs(spec: ExperimentSpec, runs: list[RunConfig]) -> dict[str, list[RunConfig]]:
    """The fine-tuned runs by the combination of `tune.per` levels they belong to, in design order (controls never
    train: never tuned). The search, its price and the tuned rates all group runs by this one rule."""
    if spec.tune is None:
        return {}
    per = spec.tune.per_factors(spec.factors)
    groups: dict[str, list[RunConfig]] = {}
    for cfg in runs:
        if cfg.kind == "finetune":
            groups.setdefault(combination_name(cfg.factors, per), []).append(cfg)
    return groups


def with_tuned_rates(spec: ExperimentSpec, runs: list[RunConfig], experiment_dir: Path) -> list[RunConfig]:
    """The runs, each fine-tuned one of a searched combination at that combination's best learning rate."""
    best = read_best(experiment_dir) if spec.tune is not None else {}
    if spec.tune is None or not best:
        return runs
    per = spec.tune.per_factors(spec.factors)
    out = []
    for cfg in runs:
        rate = best.get(combination_name(cfg.factors, per)) if cfg.kind == "finetune" else None
        if rate is None or cfg.training is None:
            out.append(cfg)
            continue
        training = cfg.training.model_copy(update={"learning_rate": rate.learning_rate})
        out.append(cfg.model_copy(update={"training": training, "tuned": rate.source}))
    return out
