"""What successive halving spends: the steps a search's trials are expected to train once the pruner has stopped the
ones it stops, so the plan prices the search as the pruner spends it, not as if every trial trained fully.

Optuna's asynchronous rule: rungs at r·η^k steps; a trial reaching rung k is kept when among the best ⌊m/η⌋ of the m
trials that reached it so far (the best one when that is 0). Which trials are good is unknown beforehand, so the spend
is an expectation over every order of their quality (exact up to EXACT_UP_TO trials, else sampled), ranks kept across
rungs. A sampler that learns (TPE) keeps later trials more often: the price leans low then."""

from __future__ import annotations

import itertools
import random
from functools import lru_cache

REDUCTION_FACTOR = 3  # successive halving keeps the best third of the trials at each rung (tune/search.py)
VALIDATIONS_PER_TRIAL = 4  # where the spec sets no validation interval: the pruner sees about this many
EXACT_UP_TO = 6  # trials: every order enumerated (6! = 720)
SAMPLED_ORDERS = 2000  # orders drawn, seeded, for more trials
ORDER_SEED = 0


def validation_interval(every: int | None, steps: int) -> int:
    """A trial's validation interval (the pruner's min_resource): the spec's, else VALIDATIONS_PER_TRIAL a trial."""
    return every or max(1, steps // VALIDATIONS_PER_TRIAL)


def rungs(min_resource: int, steps: int, eta: int = REDUCTION_FACTOR) -> list[int]:
    """The steps at which the pruner judges a trial of `steps` steps: r, r·η, r·η², … up to `steps`."""
    out, at = [], max(1, min_resource)
    while at <= steps:
        out.append(at)
        at *= eta
    return out


def kept(rank: int, earlier: list[int], eta: int) -> bool:
    """Optuna's promotion rule: `rank` (lower is better) among the m ranks that reached the rung (it included)."""
    competing = sorted(earlier + [rank])
    return rank <= competing[max(1, len(competing) // eta) - 1]


def order_steps(order: tuple[int, ...], rung_steps: list[int], steps: int, eta: int) -> tuple[int, int]:
    """(steps all trials train, how many train all `steps`) when their quality ranks arrive in `order`."""
    reached: list[list[int]] = [[] for _ in rung_steps]
    total = finished = 0
    for rank in order:
        spent = steps
        for k, at in enumerate(rung_steps):
            promoted = kept(rank, reached[k], eta)
            reached[k].append(rank)
            if not promoted:
                spent = at
                break
        total += spent
        finished += spent == steps
    return total, finished


@lru_cache(maxsize=256)
def expected_spend(trials: int, steps: int, min_resource: int, eta: int = REDUCTION_FACTOR) -> tuple[float, float]:
    """(mean steps a trial trains, expected trials that train their whole budget) for `trials` of ≤ `steps` steps."""
    if trials < 1 or steps < 1:
        return 0.0, 0.0
    rung_steps = rungs(min_resource, steps, eta)
    if not rung_steps:
        return float(steps), float(trials)
    if trials <= EXACT_UP_TO:
        orders = list(itertools.permutations(range(trials)))
    else:
        rng = random.Random(ORDER_SEED)
        orders = [tuple(rng.sample(range(trials), trials)) for _ in range(SAMPLED_ORDERS)]
    spends = [order_steps(o, rung_steps, steps, eta) for o in orders]
    return sum(t for t, _ in spends) / len(orders) / trials, sum(f for _, f in spends) / len(orders)


def expected_steps(trials: int, steps: int, min_resource: int, eta: int = REDUCTION_FACTOR) -> float:
    """The mean steps a trial trains in a search of `trials` trials of at most `steps` steps each."""
    return expected_spend(trials, steps, min_resource, eta)[0]


def expected_finished(trials: int, steps: int, min_resource: int, eta: int = REDUCTION_FACTOR) -> float:
    """The trials expected to train their whole budget (never pruned)."""
    return expected_spend(trials, steps, min_resource, eta)[1]


def spent_share(trials: int, steps: int, min_resource: int, eta: int = REDUCTION_FACTOR) -> float:
    """The share of the trials' budgets the pruner is expected to let them train (1.0: nothing pruned)."""
    return expected_steps(trials, steps, min_resource, eta) / steps if steps >= 1 else 1.0
