"""The plan and the search: a combination's runs take its tuned rate from tune/best.json (with the source in
run.yaml), and plan.md and `plan --json` price each combination's search."""

from __future__ import annotations

import yaml

from tunelab.fsutil import human_seconds
from tunelab.mcp.models import PlanOut
from tunelab.plan.planner import make_plan
from tunelab.rundir.tuned import TunedRate, write_best
from tunelab.scaffold.write import scaffold

TUNE = {"learning_rate": {"low": 1e-4, "high": 1e-2}, "per": ["lora_rank"], "trials": 6, "budget": 0.25}


def test_each_combinations_runs_take_its_tuned_rate_with_the_source(write_spec):
    spec = write_spec(factors={"lora_rank": [4, 8]}, tune=TUNE)
    exp = spec.parent
    rate = TunedRate(combination="lora_rank-8", learning_rate=3.2e-4, objective="val_loss", value=0.412, trial=5,
                     trials=8, pruned=3)
    write_best(exp, {"lora_rank-8": rate})
    runs = {r.factors["lora_rank"]: r for r in make_plan(spec, estimates=False).finetune_runs
            if r.default_lr_of is None}  # the default-lr twins: tests/unit/test_tune_twins.py
    assert runs[8].training.learning_rate == 3.2e-4  # type: ignore[union-attr]
    assert runs[8].tuned == "tuned: best of 8 trials, val loss 0.412 at 0.00032, trial 5"
    assert runs[4].training.learning_rate == 0.002 and runs[4].tuned is None  # type: ignore[union-attr]
    for cfg in [c for c in scaffold(spec).finetune_runs if c.default_lr_of is None]:  # what the job reads
        written = yaml.safe_load((cfg.run_dir / "run.yaml").read_text())
        assert written["training"]["learning_rate"] == (3.2e-4 if cfg.factors["lora_rank"] == 8 else 0.002)
        assert written.get("tuned") == (rate.source if cfg.factors["lora_rank"] == 8 else None)


def test_a_run_without_tune_writes_no_new_keys(write_spec):
    cfg = scaffold(write_spec(factors={"lora_rank": [4]})).finetune_runs[0]
    written = yaml.safe_load((cfg.run_dir / "run.yaml").read_text())
    assert "tuned" not in written and "directory" not in written


def test_the_plan_prices_each_combinations_search(write_spec):
    plan = make_plan(write_spec(factors={"lora_rank": [4, 8]}, tune=TUNE))
    assert [c.combination for c in plan.search] == ["lora_rank-4", "lora_rank-8"]
    for cost in plan.search:
        est = plan.estimates[cost.run]
        assert est.seconds is not None and est.startup_s is not None
        # the run calibrates its step cost after training (first contact: priced; after measured runs: theirs), a
        # trial does not
        assert est.finish_s and est.finish_s > 0
        training = est.seconds - est.startup_s - est.finish_s
        full = 6 * (est.startup_s + 0.25 * training)  # each trial starts in full
        assert cost.unpruned_s == round(full, 1)
        assert f"less its {est.finish_s:g} s step-cost calibration, which no trial takes" in cost.source
        # 320 rows, 8 a micro-batch, one epoch: 40 steps; a trial's budget a quarter of them, 10 steps, validated
        # every 10 // 4 = 2. Successive halving (η 3) of 6 trials judges them at rungs 2 and 6: over the 720 orders
        # of their ranks, every one alike, a trial trains 5809/1080 steps on average (worked out by enumerating the
        # orders with the promotion rule, outside tunelab): a share of 5809/10800 = 0.5379 of its 10
        assert est.steps == 40 and cost.steps_per_trial == 10 and cost.trials == 6
        share = 5809 / 10800
        assert cost.spent_share == 0.5379
        total = 6 * (est.startup_s + share * 0.25 * training)  # as the pruner spends it
        assert cost.seconds == round(total, 1)
        if est.time_range is not None:
            p90 = est.time_range.p90_s * total / est.seconds
            assert cost.time_range is not None and cost.time_range.p90_s == round(p90, 1)
    assert PlanOut.of(plan).search == plan.search
    from tunelab.plan.markdown import render_plan_md

    text = render_plan_md(plan)
    assert "## Learning-rate search" in text and "| lora_rank-8 |" in text
    total = sum(c.seconds for c in plan.search if c.seconds is not None)
    assert f"**Search total:** 2 combination(s), 12 trials: {human_seconds(total)} as successive halving" in text


def test_a_local_search_prices_its_later_trials_without_the_stacks_import(write_spec, monkeypatch):
    """On the local executor a trial after its combination's first is forked from a warm process (execute/
    warm_jobs.py): it skips the stack's import as the jobs recorded it, here given as 2 s. On a scheduler every trial
    starts in full."""
    from tunelab.forecast import jobstart, tunecost
    from tunelab.spec.resources import ExecutorKind

    monkeypatch.setattr(jobstart, "recorded_import_s", lambda stack: 2.0)
    plan = make_plan(write_spec(factors={"lora_rank": [4, 8]}, tune=TUNE))
    for cost in plan.search:
        est = plan.estimates[cost.run]
        assert est.seconds is not None and est.startup_s is not None
        skipped = min(2.0, est.startup_s)
        full = 6 * (est.startup_s + 0.25 * (est.seconds - est.startup_s - (est.finish_s or 0.0))) - 5 * skipped
        assert cost.unpruned_s == round(full, 1)
        assert f"− 5 × {skipped:.1f} s: the trials after the first forked" in cost.source

    def on(kind: ExecutorKind):
        return plan.spec.model_copy(update={"resources": plan.spec.resources.model_copy(update={"executor": kind})})

    assert [tunecost.warm_start_s(on(k)) for k in ExecutorKind] == [2.0, 0.0, 0.0]
    monkeypatch.setattr(jobstart, "recorded_import_s", lambda stack: None)  # no import recorded yet: all in full
    assert tunecost.warm_start_s(on(ExecutorKind.LOCAL)) == 0.0
