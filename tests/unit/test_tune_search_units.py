"""The search's pieces that need no training: combination names, a trial's run, and the seeded asking that makes
the rates a search asks independent of where it was stopped (real Optuna, a real journal file)."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from tunelab.plan.planner import make_plan
from tunelab.spec import load_spec
from tunelab.spec.tune import combination_name
from tunelab.tune.search import PARAM, Combination, _next_trial, journal, trial_config

TUNE = {"learning_rate": {"low": 1e-5, "high": 1e-2}, "per": ["lora_rank"], "trials": 4, "budget": 0.25}


def test_combination_names_name_the_levels():
    levels = {"model": "tiny", "dataset": "caps", "lora_rank": 8, "main.order": "by_length"}
    assert combination_name(levels, ["model", "lora_rank"]) == "tiny_lora_rank-8"
    assert combination_name(levels, ["main.order"]) == "main_order-by_length"
    assert combination_name(levels, []) == "all"
    assert combination_name({"prompt": "p1", "learning_rate": 1e-4}, ["prompt"]) == "p1"


def test_a_trial_is_the_combinations_run_at_its_rate_for_a_budget_of_its_steps(write_spec):
    plan = make_plan(write_spec(factors={"lora_rank": [4]}, tune=TUNE), estimates=False)
    run = plan.finetune_runs[0]
    combo = Combination("lora_rank-4", {"lora_rank": 4}, (run,), steps=40)
    cfg = trial_config(combo, plan.experiment_dir, 3, 3.2e-4, 0.25)
    assert cfg.training is not None and run.training is not None
    assert (cfg.training.learning_rate, cfg.training.max_steps, cfg.training.validation_every_steps) == (3.2e-4, 10, 2)
    assert cfg.run_dir == plan.experiment_dir / "tune" / "lora_rank-4" / "trial-3"
    assert cfg.training.lora_rank == run.training.lora_rank and cfg.model == run.model and cfg.tuned is None
    assert cfg.trial == 3 and run.trial is None  # its job skips the step-cost calibration (test_train.py)
    assert trial_config(combo, plan.experiment_dir, 0, 1e-3, 0.01).training.max_steps == 1  # type: ignore[union-attr]


def _asked(path: Path, stops: set[int], trials: int = 5) -> list[float]:
    """Rates of `trials` trials told in turn; before each number in `stops` the study is loaded again from the
    journal, as a search started again after a kill loads it."""
    spec = load_spec(path)
    assert spec.tune is not None
    storage = journal(path.parent)
    study = optuna.create_study(study_name="c", storage=storage, load_if_exists=True)
    rates = []
    for number in range(trials):
        if number in stops:
            study = optuna.load_study(study_name="c", storage=journal(path.parent))
        trial, reported = _next_trial(study, spec.tune, 7, trials)
        assert trial.number == number and reported == set()
        rates.append(trial.params[PARAM])
        study.tell(trial, (trial.params[PARAM] - 1e-3) ** 2)
    return rates


def test_the_rates_asked_do_not_depend_on_where_the_search_stopped(tmp_path, spec_in):
    whole = _asked(spec_in(tmp_path / "a", tune=TUNE), stops=set())
    interrupted = _asked(spec_in(tmp_path / "b", tune=TUNE), stops={1, 3, 4})
    assert whole == interrupted and len(set(whole)) == len(whole)
    assert all(1e-5 <= r <= 1e-2 for r in whole)


def test_a_trial_left_running_is_taken_up_again_with_what_it_reported(tmp_path, spec_in):
    spec = load_spec(spec_in(tmp_path, tune=TUNE))
    assert spec.tune is not None
    study = optuna.create_study(study_name="c", storage=journal(tmp_path))
    left, _ = _next_trial(study, spec.tune, 7, 4)
    left.report(2.5, 3)  # then the search was killed
    again = optuna.load_study(study_name="c", storage=journal(tmp_path))
    trial, reported = _next_trial(again, spec.tune, 7, 4)
    assert trial.number == left.number and trial.params == left.params and reported == {3}
    again.tell(trial, 2.0)
    assert again.get_trials()[0].state == TrialState.COMPLETE and len(again.get_trials()) == 1


def test_a_trial_marked_pruned_by_a_killed_search_is_told_pruned_without_training_again(write_spec):
    from tunelab.execute.local_jobs import LocalExecutor
    from tunelab.rundir.tuned import Pruned, write_pruned
    from tunelab.tune.trial import JOB_FILE, LOCAL_LOOK_S, TrialRun

    spec_path = write_spec(factors={"lora_rank": [4]}, tune=TUNE)
    plan = make_plan(spec_path, estimates=False)
    study = optuna.create_study(study_name="c", storage=journal(plan.experiment_dir))
    assert plan.spec.tune is not None
    trial, _ = _next_trial(study, plan.spec.tune, 7, 4)
    combo = Combination("lora_rank-4", {"lora_rank": 4}, (plan.finetune_runs[0],), steps=40)
    cfg = trial_config(combo, plan.experiment_dir, trial.number, trial.params[PARAM], 0.25)
    cfg.run_dir.mkdir(parents=True)
    write_pruned(cfg.run_dir, Pruned(step=3, value=4.4, at="2026-01-01T00:00:00+00:00"))
    run = TrialRun(LocalExecutor(), cfg, trial, set())
    outcome = run.run()
    assert (outcome.state, outcome.value, outcome.step) == (TrialState.PRUNED, 4.4, 3)
    assert not (cfg.run_dir / JOB_FILE).exists()  # no job started
    # a local trial is looked at every 0.1 s (the executor's sweep every 0.5 s); a scheduler's at its own pace
    assert (run.interval, LocalExecutor().poll_interval([cfg])) == (LOCAL_LOOK_S, 0.5) == (0.1, 0.5)

    class Scheduler(LocalExecutor):
        detached = True

        def poll_interval(self, runs):
            return 10.0

    assert TrialRun(Scheduler(), cfg, trial, set()).interval == 10.0
