"""tune.compare_default: each tuned run has a twin at the spec's one default learning rate, named after it, marked
in run.yaml, never tuned, and priced like any run; the flag off, no twins."""

from __future__ import annotations

import pytest
import yaml

from tunelab.errors import TunelabError
from tunelab.plan.planner import make_plan
from tunelab.rundir.tuned import TunedRate, write_best
from tunelab.scaffold.write import scaffold

TUNE = {"learning_rate": {"low": 1e-4, "high": 1e-2}, "per": ["lora_rank"], "trials": 2, "budget": 0.25}
DEFAULT_LR = 0.002  # base_spec's training.learning_rate


def test_each_tuned_run_has_a_twin_at_the_default_rate_never_tuned(write_spec):
    spec = write_spec(factors={"lora_rank": [4, 8]}, tune=TUNE)
    write_best(spec.parent, {"lora_rank-8": TunedRate(combination="lora_rank-8", learning_rate=3.2e-4,
                                                      objective="val_loss", value=0.4, trial=1, trials=2)})
    plan = scaffold(spec)
    names = [c.name for c in plan.runs]
    tuned = [c for c in plan.finetune_runs if c.default_lr_of is None]
    twins = [c for c in plan.finetune_runs if c.default_lr_of is not None]
    assert [t.name for t in twins] == [f"{c.name}_lr-default" for c in tuned]
    assert names.index(twins[0].name) > max(names.index(c.name) for c in tuned)  # after the tuned runs
    for twin, run in zip(twins, tuned):
        written = yaml.safe_load((twin.run_dir / "run.yaml").read_text())
        assert written["default_lr_of"] == run.name and "tuned" not in written
        assert written["training"]["learning_rate"] == DEFAULT_LR
        assert written["factors"] == run.factors and twin.run_dir.parent.name == "runs"
    assert next(c for c in tuned if c.factors["lora_rank"] == 8).training.learning_rate == 3.2e-4  # type: ignore[union-attr]
    assert {c.combination for c in plan.search} == {"lora_rank-4", "lora_rank-8"}  # twins are not searched


def test_the_plan_prices_the_twins_like_any_run(write_spec):
    plan = make_plan(write_spec(factors={"lora_rank": [4]}, tune=TUNE))
    (run,) = [c for c in plan.finetune_runs if c.default_lr_of is None]
    twin = plan.estimates[f"{run.name}_lr-default"]
    assert twin.seconds is not None and twin.steps == plan.estimates[run.name].steps


def test_compare_default_off_adds_no_twins(write_spec):
    plan = make_plan(write_spec(factors={"lora_rank": [4, 8]}, tune={**TUNE, "compare_default": False}),
                     estimates=False)
    assert all(c.default_lr_of is None for c in plan.runs) and len(plan.finetune_runs) == 2


def test_no_tune_block_adds_no_twins(write_spec):
    plan = make_plan(write_spec(factors={"lora_rank": [4, 8]}), estimates=False)
    assert len(plan.finetune_runs) == 2


def test_compare_default_must_be_a_bool(write_spec):
    with pytest.raises(TunelabError, match="compare_default"):
        make_plan(write_spec(factors={"lora_rank": [4]}, tune={**TUNE, "compare_default": "sometimes"}),
                  estimates=False)
