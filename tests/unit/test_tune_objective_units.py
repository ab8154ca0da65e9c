"""tune.objective resolved and read: which task a bare metric belongs to, which way is better, the value a trial's
scores.json holds, the choice a real Optuna study makes when told the objective its way, and the plan's price of
the trials' evaluations."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from tunelab.evaluate.objective import Objective
from tunelab.forecast.halving import expected_finished, validation_interval
from tunelab.forecast.sweeptime import Sweep, sweep_forecast
from tunelab.plan.planner import make_plan, split_lengths
from tunelab.rundir.scores import TaskScores, task_dir, write_scores
from tunelab.spec import EvalSpec
from tunelab.tune.search import PARAM, Combination, best_rate

TASKS = EvalSpec.model_validate({"tasks": [{"name": "qa", "builtin": "exact_match"},
                                           {"name": "pick", "builtin": "choice"}]})


def test_an_objective_names_its_task_and_which_way_is_better():
    assert Objective.of("val_loss", TASKS) == Objective("val_loss") and not Objective("val_loss").evaluated
    assert Objective.of("accuracy", TASKS) == Objective("accuracy", "qa")  # the first task that reports it
    assert Objective.of("brier", TASKS) == Objective("brier", "pick")
    assert Objective.of("pick/accuracy", TASKS) == Objective("accuracy", "pick")
    assert [Objective.parse(n).lower_is_better for n in ("val_loss", "pick/brier", "pick/ece", "qa/accuracy",
                                                          "pick/roc_auc")] == [True, True, True, False, False]
    assert Objective.parse("pick/macro_f1").name == "pick/macro_f1" and Objective.parse("qa/accuracy").words == \
        "qa accuracy"


def _scores(run_dir, label: str, epoch: int, task: str, metrics: dict) -> None:
    write_scores(task_dir(run_dir, label, task), TaskScores(
        run="t", kind="finetune", label=label, epoch=epoch, task=task, metrics=metrics, primary_metric="accuracy",
        score=metrics.get("accuracy"), samples=10, log="x.eval", model_path="m", duration_s=1.0,
        evaluated_at="2026-11-25T00:00:00"))


def test_a_trials_objective_is_read_from_its_last_checkpoints_scores(tmp_path):
    assert Objective("accuracy", "qa").read(tmp_path) is None  # not evaluated yet
    _scores(tmp_path, "epoch_0", 0, "qa", {"accuracy": 0.25, "stderr": 0.1})
    _scores(tmp_path, "epoch_1", 1, "qa", {"accuracy": 0.5, "stderr": 0.1})
    _scores(tmp_path, "epoch_1", 1, "pick", {"accuracy": 0.75, "brier": 0.2})
    assert Objective("accuracy", "qa").read(tmp_path) == 0.5
    assert Objective("brier", "pick").read(tmp_path) == 0.2
    assert Objective("roc_auc", "pick").read(tmp_path) is None  # not among what the task reported


@pytest.mark.parametrize("objective, values, best", [("qa/accuracy", [0.25, 0.75, 0.5], 1),
                                                     ("pick/brier", [0.25, 0.75, 0.125], 2),
                                                     ("val_loss", [1.5, 0.9, 1.2], 1)])
def test_the_search_chooses_the_best_trial_whichever_way_is_better(objective, values, best):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize")
    target = Objective.parse(objective)
    for value in values:
        trial = study.ask()
        trial.suggest_float(PARAM, 1e-4, 1e-2, log=True)
        study.tell(trial, target.told(value), state=TrialState.COMPLETE)
    pruned = study.ask()
    pruned.suggest_float(PARAM, 1e-4, 1e-2, log=True)
    study.tell(pruned, None, state=TrialState.PRUNED)
    rate = best_rate(study, Combination("all", {}, (), 40), target)
    assert rate is not None
    assert (rate.trial, rate.value, rate.objective, rate.trials, rate.pruned) == (best, values[best], objective, 4, 1)
    assert rate.learning_rate == study.trials[best].params[PARAM]


def test_the_plan_prices_an_evaluation_for_each_trial_expected_to_finish(write_spec, quiet_planning):
    """Two plans compared: the load while planning given (none, conftest's quiet_planning), so both price alike."""
    tune = {"learning_rate": {"low": 1e-4, "high": 1e-2}, "trials": 2, "budget": 0.25}
    spec = write_spec(factors={"lora_rank": [4]}, tune=tune)
    by_loss = make_plan(spec).search[0]
    plan = make_plan(write_spec(factors={"lora_rank": [4]}, tune={**tune, "objective": "exact_match/accuracy"}))
    cost = plan.search[0]
    assert by_loss.evaluated == 0 and by_loss.eval_s is None
    steps = cost.steps_per_trial
    # two trials, a rung inside the budget: the first always finishes, the second as the better of two (1/2)
    assert validation_interval(None, steps) < steps and cost.evaluated == pytest.approx(1.5, abs=1e-3)
    assert cost.evaluated == round(expected_finished(2, steps, validation_interval(None, steps)), 3)
    # one trial's job evaluates what the run itself does (the one task on its last checkpoint): the run's own
    # evaluation on the sweep's timeline, its job's start included
    forecast = sweep_forecast(Sweep(plan.spec, plan.runs, plan.estimates, plan.gpu, plan.node), split_lengths)
    line = next(r for r in forecast.runs if r.run == cost.run)
    assert line.eval_s is not None and cost.eval_s == pytest.approx(line.eval_s + line.eval_start_s, abs=0.15)
    assert cost.seconds == pytest.approx((by_loss.seconds or 0) + 1.5 * cost.eval_s, abs=0.2)
    assert "1.50 trials expected to finish × one evaluation job" in cost.source
    assert "exact_match accuracy" not in cost.source  # the source names the task's prediction, not the objective


def test_trials_tied_on_the_metric_are_told_apart_by_their_last_validation_loss():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize")
    target = Objective.parse("qa/accuracy")
    for losses in ([2.0, 1.4], [2.0, 1.1], [2.0, 1.3]):  # the same accuracy; trial 1 ends at the lowest loss
        trial = study.ask()
        trial.suggest_float(PARAM, 1e-4, 1e-2, log=True)
        for step, loss in enumerate(losses, start=1):
            trial.report(loss, step)
        study.tell(trial, target.told(0.5), state=TrialState.COMPLETE)
    rate = best_rate(study, Combination("all", {}, (), 40), target)
    assert rate is not None and (rate.trial, rate.value) == (1, 0.5)


def test_status_says_a_trained_trial_is_being_evaluated_until_its_scores_exist(tmp_path):
    import json

    from tunelab.tune.sweep import progress_lines

    trial = tmp_path / "tune" / "all" / "trial-0"
    trial.mkdir(parents=True)
    (trial / "status.json").write_text(json.dumps({"state": "completed"}))
    assert progress_lines(tmp_path, 2) == ["all: 1/2 trials (1 completed)"]  # judged by its loss: no evaluation
    (trial / "tune_job.json").write_text(json.dumps({"executor": "local", "job": "1", "eval_job": "2"}))
    assert progress_lines(tmp_path, 2) == ["all: 1/2 trials (1 evaluating)"]
    _scores(trial, "epoch_0", 0, "qa", {"accuracy": 0.5})
    assert progress_lines(tmp_path, 2) == ["all: 1/2 trials (1 completed)"]
