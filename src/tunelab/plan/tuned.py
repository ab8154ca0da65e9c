"""The sweep's runs at their combination's tuned learning rate: what `tunelab tune` chose (tune/best.json) goes into
each run's training with its source, so run.yaml says where the rate came from. A spec without `tune:`, or a
combination not searched yet, keeps the spec's rate. With `tune.compare_default`, each tuned run also has a twin
at the spec's one default rate, so the report can say whether a finding survives the learning rate."""

from __future__ import annotations

from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.rundir.config import RunConfig
from tunelab.rundir.tuned import combination_runs, read_best
from tunelab.spec import ExperimentSpec
from tunelab.spec.tune import combination_name


def with_tuned_rates(spec: ExperimentSpec, runs: list[RunConfig], experiment_dir: Path) -> list[RunConfig]:
    """The runs, each fine-tuned one of a searched combination at that combination's best learning rate."""
    best = read_best(experiment_dir) if spec.tune is not None else {}
    if spec.tune is None or not best:
        return runs
    per = spec.tune.per_factors(spec.factors)
    out = []
    for cfg in runs:
        tuned = cfg.kind == "finetune" and cfg.default_lr_of is None  # a default-lr twin keeps the spec's rate
        rate = best.get(combination_name(cfg.factors, per)) if tuned else None
        if rate is None or cfg.training is None:
            out.append(cfg)
            continue
        training = cfg.training.model_copy(update={"learning_rate": rate.learning_rate})
        out.append(cfg.model_copy(update={"training": training, "tuned": rate.source}))
    return out


TWIN_SUFFIX = "_lr-default"


def twin_name(run: str) -> str:
    """The default-learning-rate twin's name: its run's, suffixed (a name the naming rules allow)."""
    return f"{run}{TWIN_SUFFIX}"


def with_default_twins(spec: ExperimentSpec, runs: list[RunConfig]) -> list[RunConfig]:
    """The runs and, after the fine-tuned ones, each tuned run's twin at the spec's training.learning_rate (marked
    `default_lr_of`, never tuned, trained and priced like any run). Unchanged without tune.compare_default."""
    if spec.tune is None or not spec.tune.compare_default:
        return runs
    names = {cfg.name for cfg in runs}
    twins = []
    for cfg in [c for group in combination_runs(spec, runs).values() for c in group]:
        assert cfg.training is not None  # a fine-tuned run
        name = twin_name(cfg.name)
        if name in names:
            raise TunelabError(f"the default-learning-rate twin of '{cfg.name}' would be named '{name}', the name of "
                               "another run; rename that run or set tune.compare_default: false",
                               field="tune.compare_default")
        training = cfg.training.model_copy(update={"learning_rate": spec.training.learning_rate})
        twins.append(cfg.model_copy(update={"name": name, "training": training, "default_lr_of": cfg.name,
                                            "tuned": None}))
    at = next((i for i, c in enumerate(runs) if c.kind != "finetune"), len(runs))
    return runs[:at] + twins + runs[at:]
