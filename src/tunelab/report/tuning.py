"""The report's "Tuning" section: where each combination's rate came from, what each search tried, and — the point —
whether each factor comparison holds across learning rates: the factor effects computed on the runs and on their
default-lr twins, side by side, with a plain sentence. Called tuned only where a search chose every level's rate."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.evaluate.objective import Objective
from tunelab.report.data import ReportData, RunData
from tunelab.report.document import Bullets, Figure, Para, Section, Table
from tunelab.report.effects import FactorEffect
from tunelab.report.findings import factor_effects
from tunelab.report.tuning_trials import TrialPoint, read_trials, search_objective, trials_figure
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


@dataclass
class RateComparison:
    """One factor effect at the runs' rates and at the one default rate, and what a reader should make of it."""

    tuned: FactorEffect  # the runs' effect: at tuned rates only where no level is in `unsearched`
    default: FactorEffect | None  # None: no twin of this comparison measured it
    missing: dict[Any, str]  # level -> why its twins give no value ('diverged', 'failed', 'pending', …)
    sentence: str
    unsearched: list[Any] = dataclasses.field(default_factory=list)  # levels whose rate no search chose


def ranking(eff: FactorEffect) -> list[Any]:
    """The levels best first (ties keep the spec's order)."""
    sign = -1 if eff.greater_is_better else 1
    return [s.level for s in sorted(eff.levels, key=lambda s: sign * s.mean)]


def _ranked_text(eff: FactorEffect) -> str:
    means = {s.level: s.mean for s in eff.levels}
    order = ranking(eff)
    out = f"{eff.factor} {order[0]}"
    for prev, level in zip(order, order[1:]):
        out += f" {'=' if means[level] == means[prev] else '>'} {eff.factor} {level}"
    return out


def quantity(eff: FactorEffect) -> str:
    return "final validation loss" if eff.metric == "final_val_loss" else f"{eff.task} {eff.score_metric or 'score'}"


def _rates(eff: FactorEffect, runs: dict[str, RunData]) -> str:
    """The rates each level's runs trained at, in ranking order, e.g. '0.0002, 0.0003'."""
    by_level = {s.level: s.runs for s in eff.levels}
    rates = []
    for level in ranking(eff):
        for name in by_level[level]:
            t = runs[name].config.training
            rates.append(f"{t.learning_rate:.3g}" if t is not None else "?")
    return ", ".join(dict.fromkeys(rates))


def _why_missing(twins: list[RunData]) -> str:
    """Why a level's twins give no value: diverged (a non-finite loss), else their state."""
    if any(t.nan_rows for t in twins):
        return "diverged"
    return "/".join(sorted({str(t.state) for t in twins})) or "not run"


def judge(tuned: FactorEffect, default: FactorEffect | None, missing: dict[Any, str], rates: str,
          default_rate: str, unsearched: list[Any] | None = None) -> str:
    """The plain sentence: the ranking at the tuned rates and whether it holds, changes or cannot be told at the default
    rate; without a search for some level, said to be no tuned comparison."""
    if unsearched:
        levels = ", ".join(f"{tuned.factor} {lv}" for lv in unsearched)
        return (f"{quantity(tuned)}: {_ranked_text(tuned)} at the rates used ({rates}), not at tuned rates: no "
                f"learning-rate search chose the rate of {levels}, so whether the finding holds across learning "
                "rates is not known.")
    head = f"{quantity(tuned)}: {_ranked_text(tuned)} at the tuned rates ({rates})"
    if missing:
        gone = ", ".join(f"{tuned.factor} {lv} {why}" for lv, why in missing.items())
        return f"{head}; at the default {default_rate} {gone}: the default-lr comparison is not a finding."
    if default is None or len(default.levels) < 2:
        return f"{head}; the default {default_rate} has no comparison to set beside it."
    if ranking(default) == ranking(tuned):
        return f"{head} and at the default {default_rate}: the finding holds at both."
    return (f"{head}, but {_ranked_text(default)} at the default {default_rate}: the ranking changes with the "
            "learning rate, so a comparison at the one default rate is not a finding.")


def rate_comparisons(data: ReportData, sources: dict[str, RateSource] | None = None) -> list[RateComparison]:
    """Each factor effect of the runs beside the same effect of their default-lr twins ([] without twins)."""
    if not data.twins:
        return []
    sources = rate_sources(data, read_trials(data.experiment_dir)) if sources is None else sources
    default_data = dataclasses.replace(data, runs=data.twins)
    key = lambda e: (e.factor, e.metric, e.task)  # noqa: E731
    defaults = {key(e): e for e in factor_effects(default_data)}
    runs = {r.name: r for r in data.runs}
    rates = {f"{t.config.training.learning_rate:.3g}" for t in data.twins if t.config.training is not None}
    default_rate = ", ".join(sorted(rates)) or "rate"
    out = []
    for eff in factor_effects(data):
        if len(eff.levels) < 2:
            continue
        default = defaults.get(key(eff))
        measured = {s.level for s in default.levels} if default is not None else set()
        missing = {s.level: _why_missing([t for t in data.twins if t.level(eff.factor) == s.level])
                   for s in eff.levels if s.level not in measured}
        unsearched = unsearched_levels({s.level: s.runs for s in eff.levels}, sources)
        out.append(RateComparison(eff, default, missing, judge(eff, default, missing, _rates(eff, runs),
                                                                 default_rate, unsearched), unsearched))
    return out


def _comparison_table(comparisons: list[RateComparison], tuned: bool) -> Table:
    rows = []
    for c in comparisons:
        default = {s.level: s.mean for s in c.default.levels} if c.default is not None else {}
        for s in c.tuned.levels:
            at_default = f"{default[s.level]:.4g}" if s.level in default else c.missing.get(s.level, "—")
            rows.append([c.tuned.factor, quantity(c.tuned), str(s.level), f"{s.mean:.4g}", at_default])
    return Table(["Factor", "Quantity", "Level", "Tuned rates (mean)" if tuned else "Runs' rates (mean)",
                  "Default rate (mean)"], rows,
                 caption=f"The report's factor effects, computed on the {'tuned ' if tuned else ''}runs (runs/<run>, "
                         "each at its combination's rate above) and on their default-lr twins "
                         "(runs/<run>_lr-default), each a mean over the level's completed runs.")


def _sources_blocks(sources: dict[str, RateSource], per: list[str]) -> list:
    """A line per combination: its runs, the rate they trained at and where it came from."""
    which = f"each combination of {', '.join(per)} levels (tune.per)" if per else "the whole sweep (tune.per: [])"
    blocks: list = [Para(f"The learning rate of {which}, and where it came from:"),
                    Bullets([f"`{s.combination}` ({', '.join(s.runs)}): {s.text}" for s in sources.values()])]
    if not all(s.searched for s in sources.values()):
        blocks.append(Para("A rate no search chose is the spec's default, not a tuned rate: `tunelab tune "
                           "experiment.yaml` searches it and scaffolds the runs at its rates (`tunelab run` searches "
                           "first for the runs it trains)."))
    return blocks


def _trials_table(trials: dict[str, list[TrialPoint]], objective: Objective) -> Table:
    scored = objective.evaluated
    rows = [[p.combination, str(p.number), f"{p.learning_rate:.3g}", p.state,
             f"{p.value:.4g}" if p.value is not None else "—", str(p.step) if p.step is not None else "—",
             *([f"{p.score:.4g}" if p.score is not None else "—"] if scored else []),
             "chosen" if p.chosen else ""] for points in trials.values() for p in points]
    return Table(["Combination", "Trial", "Learning rate", "State", "Val loss", "At step",
                  *([objective.words] if scored else []), ""], rows,
                 caption="tune/<combination>/trial-N: run.yaml, metrics.jsonl, pruned.json"
                 + (", eval/epoch_N/<task>/scores.json" if scored else "") + "; chosen: tune/best.json.")


def tuning_section(data: ReportData, figures_dir: Path) -> Section | None:
    """The section (None without a tune: block, a search and twins)."""
    tune = data.spec.tune if data.spec is not None else None
    objective = search_objective(data.experiment_dir, Objective.of(tune.objective, data.spec.eval)
                                 if tune is not None and data.spec is not None else None)
    trials = read_trials(data.experiment_dir, objective)
    sources = rate_sources(data, trials)
    comparisons = rate_comparisons(data, sources)
    if not trials and not comparisons and not sources:
        return None
    blocks: list = _sources_blocks(sources, tune.per_factors(data.spec.factors)) \
        if sources and tune is not None and data.spec is not None else []
    if comparisons:
        tuned = not any(c.unsearched for c in comparisons)
        blocks.append(Para("Does each finding survive the learning rate? The same comparison at each level's tuned "
                           "rate and at the spec's one default rate (A > B: A is better on that quantity):" if tuned
                           else "The same comparison at the rates the runs trained at and on their default-lr twins "
                           "at the spec's one default rate; a rate no search chose is no tuned rate, and a "
                           "comparison of a level at such a rate is no finding about tuned rates (A > B: A is "
                           "better on that quantity):"))
        blocks += [Para(c.sentence) for c in comparisons]
        blocks.append(_comparison_table(comparisons, tuned))
    for combination, points in trials.items():
        fig = trials_figure(combination, points, figures_dir, objective)
        if fig is not None:
            blocks.append(Figure(f"figures/{fig.path.name}", fig.caption, alt=fig.key.replace("_", " ")))
    if trials:
        blocks.append(_trials_table(trials, objective))
    return Section("Tuning", blocks)
