"""`tunelab tune`: one Optuna study per combination, its trials real runs one at a time, combinations side by side where
the executor has room (tune/lanes.py).

The studies live in an append-only journal (tune/journal.log: a kill loses at most a line, and it works on shared
filesystems). Run again, the search goes on where it stopped. The sampler is seeded before each ask from the spec's seed
and the trial's number, so the rates asked do not depend on where a search stopped."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from tunelab.errors import TunelabError
from tunelab.evaluate.objective import Objective
from tunelab.execute.executor import Executor
from tunelab.execute.executors import executor_named
from tunelab.forecast.halving import REDUCTION_FACTOR
from tunelab.plan.planner import Plan, make_plan
from tunelab.rundir.tuned import JOURNAL_FILE, TunedRate, read_best, tune_dir, write_best
from tunelab.spec import TuneSpec
from tunelab.tune.combos import Combination, combinations, healed_micro_batch, trial_config
from tunelab.tune.lanes import lanes, side_by_side
from tunelab.tune.trial import Lane, TrialOutcome, TrialRun
from tunelab.tune.trial_eval import TrialEvaluation

PARAM = "learning_rate"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@dataclass(frozen=True)
class TrialDone:
    """One trial's end, as the command shows it."""

    combination: str
    number: int
    learning_rate: float
    outcome: TrialOutcome
    finished: int  # the combination's finished trials, this one included
    trials: int  # the count asked for
    objective: str = "val loss"  # what a completed trial's value is (Objective.words)

    @property
    def value_text(self) -> str:
        """'val loss 0.412 at step 9' (pruned: the loss), 'exact_match accuracy 0.25 at step 10', or why it failed."""
        o = self.outcome
        if o.value is None:
            return o.error or "no value"
        what = "val loss" if o.state == TrialState.PRUNED else self.objective
        return f"{what} {o.value:.4g} at step {o.step}"


def journal(experiment_dir: Path) -> JournalStorage:
    path = tune_dir(experiment_dir) / JOURNAL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def open_study(storage: JournalStorage, combo: Combination, min_resource: int, prune: bool = True) -> optuna.Study:
    """The combination's study; `prune` off: every trial trains its budget."""
    pruner = (optuna.pruners.SuccessiveHalvingPruner(min_resource=min_resource, reduction_factor=REDUCTION_FACTOR)
              if prune else optuna.pruners.NopPruner())
    return optuna.create_study(study_name=combo.name, storage=storage, direction="minimize", pruner=pruner,
                               load_if_exists=True)


def seeded_sampler(seed: int, number: int, trials: int) -> optuna.samplers.TPESampler:
    """The sampler for trial `number`: TPE once a few trials are in (random before), seeded by both numbers."""
    return optuna.samplers.TPESampler(seed=seed * 100_003 + number, n_startup_trials=max(2, min(10, trials // 2)))


def _next_trial(study: optuna.Study, tune: TuneSpec, seed: int, trials: int) -> tuple[optuna.Trial, set[int]]:
    """The trial to run now: one left running by an earlier search (with the steps it reported), else a new one."""
    running = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    if running:
        left: FrozenTrial = running[0]
        return optuna.Trial(study, left._trial_id), set(left.intermediate_values)
    study.sampler = seeded_sampler(seed, len(study.get_trials(deepcopy=False)), trials)
    trial = study.ask()
    rates = tune.learning_rate
    trial.suggest_float(PARAM, rates.low, rates.high, log=rates.log)
    return trial, set()


def search_combination(ex: Executor, plan: Plan, combo: Combination, trials: int,
                       on_trial: Callable[[TrialDone], None], prune: bool = True,
                       lane: Lane | None = None) -> optuna.Study:
    """Trials of one combination until `trials` of them finished (completed, pruned or failed). Optuna is told
    each completed trial's objective as it minimises it (evaluate/objective.py `told`)."""
    tune = plan.spec.tune
    assert tune is not None
    objective = Objective.of(tune.objective, plan.spec.eval)
    evaluation = TrialEvaluation.of(objective, combo.run)
    first = trial_config(combo, plan.experiment_dir, 0, tune.learning_rate.high, tune.budget).training
    assert first is not None and first.validation_every_steps is not None  # every trial validates at this interval
    study = open_study(journal(plan.experiment_dir), combo, first.validation_every_steps, prune)
    seed = tune.sampler_seed(plan.spec.training.seed)
    while (finished := sum(t.state in FINISHED for t in study.get_trials(deepcopy=False))) < trials:
        trial, reported = _next_trial(study, tune, seed, trials)
        rate = float(trial.params[PARAM])
        micro = healed_micro_batch(combo, plan.experiment_dir)  # an earlier trial ran out of memory: start there
        cfg = trial_config(combo, plan.experiment_dir, trial.number, rate, tune.budget, micro)
        outcome = TrialRun(ex, cfg, trial, reported, evaluation, lane).run()
        done = outcome.state == TrialState.COMPLETE and outcome.value is not None
        study.tell(trial, objective.told(outcome.value) if done else None,  # type: ignore[arg-type]
                   state=outcome.state)
        on_trial(TrialDone(combo.name, trial.number, rate, outcome, finished + 1, trials, objective.words))
    return study


def best_rate(study: optuna.Study, combo: Combination, objective: Objective) -> TunedRate | None:
    """The completed trial with the best objective (Optuna's lowest told value; None: no trial completed). Trials
    tied on it (an accuracy over few samples often is) are told apart by their last validation loss, then by number."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE and t.value is not None]
    if not done:
        return None

    def last_loss(t: FrozenTrial) -> float:
        return t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else math.inf

    best = min(done, key=lambda t: (t.value, last_loss(t), t.number))
    pruned = sum(t.state == TrialState.PRUNED for t in study.get_trials(deepcopy=False))
    value = objective.value_of(float(best.value or 0.0)) + 0.0  # + 0.0: a negated 0 reads 0, not -0
    return TunedRate(combination=combo.name, learning_rate=float(best.params[PARAM]), objective=objective.name,
                     value=value, trial=best.number, trials=len(study.get_trials(deepcopy=False)), pruned=pruned)


def tunable_plan(spec_path: str | Path) -> Plan:
    """The sweep's plan, refused unless its spec has a `tune:` block the search can run."""
    plan = make_plan(spec_path)
    tune = plan.spec.tune
    if tune is None:
        raise TunelabError("no tune: block: add one to search learning rates (see docs/spec-reference.md)",
                           file=plan.spec_path, field="tune")
    return plan


def search(spec_path: str | Path, trials: int | None = None,
           on_trial: Callable[[TrialDone], None] = lambda done: None, prune: bool = True,
           executor: Executor | None = None, only: Collection[str] | None = None) -> dict[str, TunedRate]:
    """Every combination's search (`only`: these), then tune/best.json; the rates chosen by combination."""
    plan = tunable_plan(spec_path)
    tune = plan.spec.tune
    assert tune is not None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # each trial is shown by on_trial, in tunelab's words
    ex = executor or executor_named(plan.spec.resources.executor)
    best = read_best(plan.experiment_dir)
    todo = [c for c in combinations(plan, tune) if only is None or c.name in only]
    said = threading.Lock()  # lanes end trials at once: one line at a time

    def told(done: TrialDone) -> None:
        with said:
            on_trial(done)

    def one(combo: Combination, lane: Lane) -> optuna.Study:
        return search_combination(ex, plan, combo, trials or tune.trials, told, prune, lane)

    def keep(combo: Combination, study: optuna.Study) -> None:
        rate = best_rate(study, combo, Objective.of(tune.objective, plan.spec.eval))
        if rate is not None:
            best[combo.name] = rate
            write_best(plan.experiment_dir, best)

    side_by_side(todo, lanes(ex, [c.run for c in todo], len(todo)), one, keep)
    return best
