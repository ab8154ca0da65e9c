"""The report's "Tuning" section: what each combination's search tried (a figure and a table of its trials) and —
the point of it — whether each factor comparison holds across learning rates: the report's own factor effects
(findings.factor_effects), computed once on the tuned runs and once on their default-lr twins, side by side, with
a plain sentence saying whether the ranking survives."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.report.data import ReportData, RunData
from tunelab.report.document import Figure, Para, Section, Table
from tunelab.report.effects import FactorEffect
from tunelab.report.findings import factor_effects
from tunelab.report.tuning_trials import TrialPoint, read_trials, search_objective, trials_figure
from tunelab.evaluate.objective import Objective


@dataclass
class RateComparison:
    """One factor effect at the tuned rates and at the one default rate, and what a reader should make of it."""

    tuned: FactorEffect
    default: FactorEffect | None  # None: no twin of this comparison measured it
    missing: dict[Any, str]  # level -> why its twins give no value ('diverged', 'failed', 'pending', …)
    sentence: str


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
    """The tuned rates of each level's runs, in ranking order, e.g. '0.0002, 0.0003'."""
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
          default_rate: str) -> str:
    """The plain sentence: the ranking at the tuned rates, and whether it holds, changes or cannot be told at the
    default rate."""
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


def rate_comparisons(data: ReportData) -> list[RateComparison]:
    """Each factor effect of the tuned runs beside the same effect of their default-lr twins ([] without twins)."""
    if not data.twins:
        return []
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
        out.append(RateComparison(eff, default, missing, judge(eff, default, missing, _rates(eff, runs),
                                                                 default_rate)))
    return out


def _comparison_table(comparisons: list[RateComparison]) -> Table:
    rows = []
    for c in comparisons:
        default = {s.level: s.mean for s in c.default.levels} if c.default is not None else {}
        for s in c.tuned.levels:
            at_default = f"{default[s.level]:.4g}" if s.level in default else c.missing.get(s.level, "—")
            rows.append([c.tuned.factor, quantity(c.tuned), str(s.level), f"{s.mean:.4g}", at_default])
    return Table(["Factor", "Quantity", "Level", "Tuned rates (mean)", "Default rate (mean)"], rows,
                 caption="The report's factor effects, computed on the tuned runs (runs/<run>) and on their "
                         "default-lr twins (runs/<run>_lr-default), each a mean over the level's completed runs.")


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
    """The section (None without a search and without twins)."""
    tune = data.spec.tune if data.spec is not None else None
    objective = search_objective(data.experiment_dir, Objective.of(tune.objective, data.spec.eval)
                                 if tune is not None and data.spec is not None else None)
    trials = read_trials(data.experiment_dir, objective)
    comparisons = rate_comparisons(data)
    if not trials and not comparisons:
        return None
    blocks: list = []
    if comparisons:
        blocks.append(Para("Does each finding survive the learning rate? The same comparison at each level's tuned "
                           "rate and at the spec's one default rate (A > B: A is better on that quantity):"))
        blocks += [Para(c.sentence) for c in comparisons]
        blocks.append(_comparison_table(comparisons))
    for combination, points in trials.items():
        fig = trials_figure(combination, points, figures_dir, objective)
        if fig is not None:
            blocks.append(Figure(f"figures/{fig.path.name}", fig.caption, alt=fig.key.replace("_", " ")))
    if trials:
        blocks.append(_trials_table(trials, objective))
    return Section("Tuning", blocks)
