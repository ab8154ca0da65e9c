"""The smallest difference in accuracy a test split can resolve (statsmodels power analysis).

Assumptions, stated wherever the figure is shown: two-sided alpha 0.05, power 0.8; unpaired: two
independent evaluations of n samples at a baseline accuracy of 50 % (the worst case); paired: the same
n samples, a given share of which change answer between the two evaluations (McNemar-like, as a paired
t-test on per-sample differences of -1, 0 and +1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tunelab.diskcache import cached_json

ALPHA = 0.05
POWER = 0.8
BASELINE = 0.5
DISCORDANT = 0.2  # share of test samples two fine-tuned evaluations answer differently (assumed)


@dataclass(frozen=True)
class Detectable:
    n: int
    unpaired: float | None  # smallest resolvable difference (fraction), None when above 100 % - baseline
    paired: float | None
    alpha: float = ALPHA
    power: float = POWER
    baseline: float = BASELINE
    discordant: float = DISCORDANT


def _unpaired(n: int, alpha: float, power: float, baseline: float) -> float | None:
    from scipy.optimize import brentq
    from statsmodels.stats.power import NormalIndPower
    from statsmodels.stats.proportion import proportion_effectsize

    # solve_power answers a 1-element array for some n (its fallback root finder): a number from here on
    h = _number(NormalIndPower().solve_power(effect_size=None, nobs1=n, alpha=alpha, power=power, ratio=1.0))
    top = 1.0 - 1e-12
    if proportion_effectsize(top, baseline) < h:
        return None
    return float(brentq(lambda p: proportion_effectsize(p, baseline) - h, baseline, top)) - baseline


def _paired(n: int, alpha: float, power: float, discordant: float) -> float | None:
    from scipy.optimize import brentq
    from statsmodels.stats.power import TTestPower

    d = _number(TTestPower().solve_power(effect_size=None, nobs=n, alpha=alpha, power=power))

    def effect(delta: float) -> float:
        """Mean / SD of a per-sample difference in {-1, 0, +1} that is +1 with probability (discordant + delta)/2
        and -1 with (discordant - delta)/2: mean delta, variance discordant - delta²."""
        return delta / math.sqrt(discordant - delta * delta)

    top = discordant * (1 - 1e-9)
    if effect(top) < d:
        return None
    return float(brentq(lambda x: effect(x) - d, 1e-9, top))


def _number(value: object) -> float:
    import numpy as np

    return float(np.asarray(value, dtype=float).reshape(-1)[0])


def detectable_difference(n: int, alpha: float = ALPHA, power: float = POWER, baseline: float = BASELINE,
                          discordant: float = DISCORDANT) -> Detectable:
    """The smallest accuracy difference n test samples resolve, unpaired and paired."""
    if n < 2:
        return Detectable(n, None, None, alpha, power, baseline, discordant)

    # statsmodels' import alone is ~2 s of every `plan`; the answer depends only on these numbers
    unpaired, paired = cached_json("detectable-difference", [n, alpha, power, baseline, discordant], lambda: [
        _unpaired(n, alpha, power, baseline), _paired(n, alpha, power, discordant)])
    return Detectable(n, unpaired, paired, alpha, power, baseline, discordant)


def samples_needed(difference: float, alpha: float = ALPHA, power: float = POWER, baseline: float = BASELINE
                   ) -> int | None:
    """Test samples per evaluation to resolve an accuracy difference unpaired (an upper bound for paired)."""
    from statsmodels.stats.power import NormalIndPower
    from statsmodels.stats.proportion import proportion_effectsize

    diff = abs(difference)
    if diff <= 0 or baseline + diff >= 1:
        return None
    h = proportion_effectsize(baseline + diff, baseline)
    return math.ceil(NormalIndPower().solve_power(effect_size=h, nobs1=None, alpha=alpha, power=power, ratio=1.0))
