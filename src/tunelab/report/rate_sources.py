"""Where each combination's learning rate came from: a search chose it (tune/best.json, run.yaml's `tuned:`) or the
spec's default. A rate no search produced is never called tuned."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sized
from dataclasses import dataclass

from tunelab.evaluate.objective import Objective
from tunelab.report.data import ReportData, RunData
from tunelab.rundir.tuned import TunedRate, read_best
from tunelab.spec.tune import combination_name


@dataclass(frozen=True)
class RateSource:
    """One combination of the `tune.per` levels: its runs, the rates they trained at, and the search behind them."""

    combination: str
    runs: tuple[str, ...]  # the fine-tuned runs of the combination (default-lr twins apart)
    rates: tuple[float, ...]  # the learning rates those runs trained at (run.yaml), distinct, in run order
    search: TunedRate | None  # tune/best.json's record (None: no search chose a rate)
    trials: int  # the search's trials under tune/<combination>/ (0: no search started)
    named: bool  # every run's run.yaml names a search as its rate's source (`tuned:`)
    claims: tuple[str, ...] = ()  # the distinct `tuned:` sources its runs' run.yaml files name

    @property
    def searched(self) -> bool:
        """The runs trained at the rate a search chose for them."""
        s = self.search
        return s is not None and self.named and all(math.isclose(r, s.learning_rate, rel_tol=1e-9)
                                                    for r in self.rates)

    def _rates(self) -> str:
        return ", ".join(f"{r:.3g}" for r in self.rates) or "?"

    @property
    def text(self) -> str:
        """'searched: 4 trials, best val loss 0.412 at rate 0.00032', or 'not searched: the spec's default rate
        0.02' (or why a search that ran gave the runs no rate of its own)."""
        s = self.search
        if s is not None:
            found = (f"searched: {s.trials} trials, best {Objective.parse(s.objective).words} {s.value:.4g} at rate "
                     f"{s.learning_rate:.3g}")
            if self.searched:
                return found
            return (f"{found}, but its runs trained at {self._rates()}, not at it (scaffolded before the search "
                    "chose it): not tuned")
        if self.claims:  # run.yaml says a search chose the rate, but no search record backs it
            return (f"not confirmed as tuned: run.yaml names a search ({'; '.join(self.claims)}), but tune/best.json "
                    f"holds no record of {self.combination}: rate {self._rates()}")
        if self.trials:
            return (f"searched: {self.trials} trials, no rate chosen (the search has not ended, or no trial "
                    f"completed), so not tuned: the spec's default rate {self._rates()}")
        return f"not searched: the spec's default rate {self._rates()}"


def rate_sources(data: ReportData, trials: Mapping[str, Sized]) -> dict[str, RateSource]:
    """Each combination's source of its runs' rate ({} without `tune:`); `trials`: its trials as read."""
    tune = data.spec.tune if data.spec is not None else None
    if data.spec is None or tune is None:
        return {}
    per = tune.per_factors(data.spec.factors)
    groups: dict[str, list[RunData]] = {}
    for run in data.runs:
        groups.setdefault(combination_name(run.config.factors, per), []).append(run)
    best = read_best(data.experiment_dir)
    out = {}
    for name, runs in groups.items():
        rates = tuple(dict.fromkeys(r.config.training.learning_rate for r in runs if r.config.training is not None))
        out[name] = RateSource(name, tuple(r.name for r in runs), rates, best.get(name), len(trials.get(name, ())),
                               all(r.config.tuned is not None for r in runs),
                               tuple(dict.fromkeys(r.config.tuned for r in runs if r.config.tuned)))
    return out


def unsearched_levels(levels: dict[object, list[str]], sources: dict[str, RateSource]) -> list[object]:
    """The levels (level -> its runs) with a run whose rate no search chose: a comparison of them is not tuned."""
    of_run = {run: s for s in sources.values() for run in s.runs}
    return [level for level, runs in levels.items()
            if any(run not in of_run or not of_run[run].searched for run in runs)]
