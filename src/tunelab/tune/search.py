"""`tunelab tune`: one Optuna study per combination, its trials real runs one at a time, combinations side by side where
the executor has room (tune/search.py).

The studies live in an append-only journal (tune/journal.log: a kill loses at most a line, and it works on shared
filesystems). Run again, the search goes on where it stopped. The sampler is seeded before each ask from the spec's seed
and the trial's number, so the rates asked do not depend on where a search stopped."""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Collection
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from tunelab.errors import TunelabError
from tunelab.evaluate.objective import Objective
from tunelab.execute.executor import Executor
from tunelab.execute.executors import executor_named
from tunelab.forecast.halving import REDUCTION_FACTOR, validation_interval
from tunelab.plan.planner import Plan, make_plan
from tunelab.rundir.config import RUN_FILE, RunConfig, load_run_config
from tunelab.rundir.tuned import (
    JOURNAL_FILE,
    TRIAL_PREFIX,
    TunedRate,
    combination_runs,
    read_best,
    trial_dir,
    tune_dir,
    write_best,
)
from tunelab.spec import ExperimentSpec, TuneSpec, load_spec
from tunelab.tune.trial import Lane, TrialOutcome, TrialRun
from tunelab.tune.trial_eval import TrialEvaluation


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
        "directory": str(trial_dir(experiment_dir, combo.name, number)), "trial": number, "estimate": None,
        "tuned": None})


R = TypeVar("R")


def lanes(ex: Executor, runs: list[RunConfig], wanted: int) -> list[Lane]:
    """Up to `wanted` lanes, each a share the executor's capacity grants the sweep's runs side by side."""
    if ex.detached or wanted <= 1 or not runs:
        return [Lane()]
    room = ex.capacity(runs)
    stopping = threading.Event()
    out: list[Lane] = []
    for cfg in runs[:wanted]:
        env = room.take(cfg, len(out), len(out))
        if env is None:
            break
        out.append(Lane(env, stopping))
    return out if len(out) > 1 else [Lane()]


def side_by_side(combos: list[Combination], lanes_: list[Lane], work: Callable[[Combination, Lane], R],
                 done_with: Callable[[Combination, R], None]) -> None:
    """`work(combo, lane)` for every combination, as many at once as there are lanes; `done_with` each result as it
    comes, in this thread. Whatever stops it here (Ctrl-C, an error of a lane or of `done_with`) stops every lane."""
    if len(lanes_) == 1:  # one lane: in this thread, where Ctrl-C lands
        for combo in combos:
            done_with(combo, work(combo, lanes_[0]))
        return
    free: queue.SimpleQueue[Lane] = queue.SimpleQueue()
    for lane in lanes_:
        free.put(lane)

    def on_a_lane(combo: Combination) -> R:
        lane = free.get()
        try:
            return work(combo, lane)
        finally:
            free.put(lane)

    pool = ThreadPoolExecutor(max_workers=len(lanes_), thread_name_prefix="tune-lane")
    pending: dict[Future[R], Combination] = {pool.submit(on_a_lane, c): c for c in combos}
    try:
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                done_with(pending.pop(future), future.result())
    except BaseException:
        for lane in lanes_:
            lane.stopping.set()  # each lane stops its job (the trial's own Ctrl-C path) and ends
        for future in pending:
            future.cancel()
        raise
    finally:
        pool.shutdown(wait=True)


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


def tunable_spec(spec_path: str | Path) -> ExperimentSpec:
    """The sweep's spec, refused unless it has a `tune:` block the search can run."""
    spec = load_spec(spec_path)
    if spec.tune is None:
        raise TunelabError("no tune: block: add one to search learning rates (see docs/spec-reference.md)",
                           file=Path(spec_path), field="tune")
    return spec


def search(spec_path: str | Path, trials: int | None = None,
           on_trial: Callable[[TrialDone], None] = lambda done: None, prune: bool = True,
           executor: Executor | None = None, only: Collection[str] | None = None) -> dict[str, TunedRate]:
    """Every combination's search (`only`: these), then tune/best.json; the rates chosen by combination. On the local
    executor on a CPU the trials' warm process starts before the plan, importing beside its reading of the spec and
    data (the plan's timings wait for it: host/ahead.py)."""
    spec = tunable_spec(spec_path)
    ex = executor or executor_named(spec.resources.executor)
    with ex.warm_starts():  # a lane's trials, one after another on its share: forked from one import (local)
        ex.warm_ahead()
        return _search(make_plan(spec_path, spec=spec), ex, trials, on_trial, prune, only)


def _search(plan: Plan, ex: Executor, trials: int | None, on_trial: Callable[[TrialDone], None], prune: bool,
            only: Collection[str] | None) -> dict[str, TunedRate]:
    tune = plan.spec.tune
    assert tune is not None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # each trial is shown by on_trial, in tunelab's words
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
