"""The learning-rate search as the report shows it: every trial read from its own run directory under tune/, and a
figure per combination of the objective against the rate, so a reader sees what the chosen rate rests on."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from tunelab.evaluate.objective import Objective
from tunelab.report.figures import FigureFile, _new, _save, _slug, _style
from tunelab.rundir.config import load_run_config
from tunelab.rundir.metrics import read_metrics
from tunelab.rundir.status import read_status
from tunelab.rundir.tuned import TRIAL_PREFIX, read_best, read_pruned, tune_dir

PRUNED = "pruned"


@dataclass(frozen=True)
class TrialPoint:
    """One trial: its rate, how it ended, its validation loss (a pruned trial's at its stop), its score on an
    eval-metric objective (None: not evaluated) and whether the search chose it."""

    combination: str
    number: int
    learning_rate: float
    state: str  # pruned, or the run's own state (completed, failed, interrupted, running; pending before it began)
    value: float | None
    step: int | None
    chosen: bool
    score: float | None = None


def _last_val_loss(run_dir: Path) -> tuple[float | None, int | None]:
    rows = [(r.val_loss, r.step) for r in read_metrics(run_dir) if r.val_loss is not None]
    if not rows or not math.isfinite(rows[-1][0]):
        return None, rows[-1][1] if rows else None
    return float(rows[-1][0]), rows[-1][1]


def search_objective(experiment_dir: str | Path, spec_objective: Objective | None = None) -> Objective:
    """What the search judged its trials by: tune/best.json's objective, else the spec's, else the validation loss."""
    named = {b.objective for b in read_best(experiment_dir).values()}
    return Objective.parse(min(named)) if named else spec_objective or Objective.parse("val_loss")


def read_trials(experiment_dir: str | Path, objective: Objective | None = None) -> dict[str, list[TrialPoint]]:
    """Every combination's trials by number ({} without a search); `objective`: what they were judged by."""
    root = tune_dir(experiment_dir)
    best = read_best(experiment_dir)
    objective = objective or search_objective(experiment_dir)
    out: dict[str, list[TrialPoint]] = {}
    for combo in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        points = []
        for d in combo.iterdir():
            number = d.name.removeprefix(TRIAL_PREFIX)
            if not d.name.startswith(TRIAL_PREFIX) or not number.isdigit() or not (d / "run.yaml").is_file():
                continue
            cfg = load_run_config(d)
            pruned = read_pruned(d)
            value, step = (pruned.value, pruned.step) if pruned is not None else _last_val_loss(d)
            chosen = combo.name in best and best[combo.name].trial == int(number)
            points.append(TrialPoint(combo.name, int(number), cfg.training.learning_rate if cfg.training else math.nan,
                                     PRUNED if pruned is not None else read_status(d).state or "pending",
                                     value, step, chosen, objective.read(d) if objective.evaluated else None))
        if points:
            out[combo.name] = sorted(points, key=lambda p: p.number)
    return out


def _loss_panel(ax, shown: list[TrialPoint]) -> None:
    """Every trial's validation loss: completed ones as dots, pruned ones as crosses where they stopped."""
    for state, marker, color, label in ((None, "o", "#1f77b4", "trial (final val loss)"),
                                        (PRUNED, "x", "#7f7f7f", "pruned (val loss when stopped)")):
        group = [p for p in shown if (p.state == PRUNED) == (state == PRUNED)]
        if group:
            ax.scatter([p.learning_rate for p in group], [p.value for p in group], marker=marker, color=color,
                       label=label, zorder=3)
    ax.set_ylabel("validation loss (nats/token)")


def _mark(ax, points: list[TrialPoint], y: str) -> None:
    """Each trial's number beside it, the chosen one ringed; the log rate axis, decades labelled."""
    for p in points:
        ax.annotate(str(p.number), (p.learning_rate, getattr(p, y)), textcoords="offset points", xytext=(4, 4),
                    fontsize=7)
    chosen = [p for p in points if p.chosen]
    if chosen:
        ax.scatter([chosen[0].learning_rate], [getattr(chosen[0], y)], s=180, facecolors="none",
                   edgecolors="#d62728", linewidths=2, label=f"chosen: trial {chosen[0].number}", zorder=4)
    ax.set_xscale("log")
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())  # 2×10⁻⁴, 3×10⁻⁴, … overlap: the decades alone are labelled
    ax.set_xlabel("learning rate (log scale)")
    ax.legend(fontsize=7)
    _style(ax)


def trials_figure(combination: str, points: list[TrialPoint], out_dir: Path,
                  objective: Objective | None = None) -> FigureFile | None:
    """The objective against the learning rate (log axis), pruned trials as crosses, an eval objective's metric beside
    the loss, the chosen one ringed; None when no trial has a value yet."""
    shown = [p for p in points if p.value is not None and p.learning_rate > 0]
    scored = [p for p in points if p.score is not None and p.learning_rate > 0]
    if not shown and not scored:
        return None
    evaluated = objective is not None and objective.evaluated
    fig = _new(10.0 if evaluated else 5.5, 3.4)
    loss_ax = fig.add_subplot(1, 2 if evaluated else 1, 1)
    _loss_panel(loss_ax, shown)
    _mark(loss_ax, shown, "value")
    loss_ax.set_title(f"Learning-rate search: {combination}", fontsize=10)
    judged = "validation loss"
    if evaluated:
        assert objective is not None
        score_ax = fig.add_subplot(1, 2, 2)
        score_ax.scatter([p.learning_rate for p in scored], [p.score for p in scored], marker="o", color="#2ca02c",
                         label="evaluated trial", zorder=3)
        score_ax.set_ylabel(f"{objective.words} ({'lower' if objective.lower_is_better else 'higher'} is better)")
        _mark(score_ax, scored, "score")
        score_ax.set_title(f"judged by {objective.words}", fontsize=10)
        judged = f"validation loss (left; what the pruner stops trials on) and {objective.words} (right; what the " \
                 "search chose by, on each trial that trained its whole budget: its scores.json)"
    key = f"tuning_{_slug(combination)}"
    caption = (f"{combination}: each trial's {judged} against its learning rate (tune/{combination}/trial-N: "
               "run.yaml, metrics.jsonl, pruned.json); the ringed trial is the rate the search chose (tune/best.json; "
               "the list above says whether its runs trained at it).")
    return _save(fig, out_dir, key, caption)
