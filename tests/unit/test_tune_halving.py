"""What successive halving spends (forecast/halving.py): the steps of one order of trials agree with Optuna's own
pruner run on that order, and the expectation over orders with a hand computation."""

from __future__ import annotations

import itertools

import optuna
import pytest

from tunelab.forecast.halving import (
    expected_finished,
    expected_spend,
    expected_steps,
    order_steps,
    rungs,
    spent_share,
    validation_interval,
)


def optuna_steps(order: tuple[int, ...], every: int, steps: int, eta: int) -> tuple[int, int]:
    """(the steps Optuna's SuccessiveHalvingPruner lets trials train, the trials it lets finish), one after another,
    each reporting its rank as its loss at every validation (a trial's rank the same at every step: curves that do
    not cross)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=every, reduction_factor=eta)
    study = optuna.create_study(direction="minimize", pruner=pruner)
    total = finished = 0
    for rank in order:
        trial = study.ask()
        trained = steps
        for step in range(every, steps + 1, every):
            trial.report(float(rank), step)
            if trial.should_prune():
                trained = step
                break
        study.tell(trial, None if trained < steps else float(rank),
                   state=optuna.trial.TrialState.PRUNED if trained < steps else optuna.trial.TrialState.COMPLETE)
        total += trained
        finished += trained == steps
    return total, finished


def test_the_rungs_are_the_validation_interval_times_powers_of_eta():
    assert rungs(10, 40, 3) == [10, 30] and rungs(5, 45, 3) == [5, 15, 45] and rungs(50, 40, 3) == []
    assert validation_interval(None, 40) == 10 and validation_interval(7, 40) == 7 and validation_interval(None, 3) == 1


@pytest.mark.parametrize("trials, every, steps, eta", [(5, 10, 40, 3), (4, 5, 45, 3), (5, 10, 40, 2)])
def test_each_order_trains_the_steps_optunas_pruner_lets_it(trials, every, steps, eta):
    for order in itertools.permutations(range(trials)):
        assert order_steps(order, rungs(every, steps, eta), steps, eta) == optuna_steps(order, every, steps, eta)


def test_the_expected_spend_matches_a_hand_computation():
    # budget 40 steps, validations every 10: rungs at 10 and 30 (η = 3); a trial is kept at a rung when it is among
    # the best max(1, m // 3) of the m trials that reached it, itself included.
    # 1 trial: alone, kept everywhere: 40.
    assert expected_steps(1, 40, 10) == 40.0
    # 2 trials: the first trains 40; the second is kept only if better than the first (1/2): then 40, else 10.
    assert expected_steps(2, 40, 10) == pytest.approx((40 + (0.5 * 40 + 0.5 * 10)) / 2)  # 32.5
    # 3 trials: the first 40, the second 25 as above; the third is kept at rung 10 only as the best of three (1/3),
    # and then it is the best at rung 30 too: 40; else 10 -> 1/3 * 40 + 2/3 * 10 = 20.
    assert expected_steps(3, 40, 10) == pytest.approx((40 + 25 + 20) / 3)
    assert spent_share(3, 40, 10) == pytest.approx(85 / 120)
    # no rung inside the budget: nothing is pruned
    assert expected_steps(4, 8, 10) == 8.0 and spent_share(4, 8, 10) == 1.0


def test_the_trials_expected_to_finish_match_a_hand_computation():
    # the same search as above: the first trial always finishes, the second with 1/2, the third with 1/3 (as the
    # best of three at rung 10, then the best at rung 30 too): what an eval-metric objective evaluates
    assert expected_finished(1, 40, 10) == 1.0
    assert expected_finished(2, 40, 10) == pytest.approx(1.5)
    assert expected_finished(3, 40, 10) == pytest.approx(1 + 1 / 2 + 1 / 3)
    assert expected_finished(4, 8, 10) == 4.0  # nothing pruned: every trial finishes


def test_more_trials_spend_a_smaller_share_and_the_sampled_price_is_seeded():
    shares = [spent_share(n, 40, 10) for n in (2, 4, 6, 8, 16)]
    assert shares == sorted(shares, reverse=True) and shares[-1] < 0.6
    expected_spend.cache_clear()
    assert spent_share(16, 40, 10) == shares[-1]  # the same seeded orders: the same price
