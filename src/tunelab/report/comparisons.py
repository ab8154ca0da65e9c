"""Paired comparisons of the report (run vs run, fine-tuned vs control, level vs level) on the same test samples; with
seed replicates, across replicate runs. "Best" and "tied" are decided by these intervals."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tunelab.report.data import ReportData, RunData
from tunelab.stats.paired import Difference, paired_difference
from tunelab.stats.replicates import SEED_FACTOR, replicate_difference


def run_difference(a: RunData, b: RunData, task: str, metric: str) -> Difference | None:
    """a minus b on a task's metric (last evaluated checkpoints), paired on their shared test samples."""
    return paired_difference([a.sample_scores(task)], [b.sample_scores(task)], metric)


def level_difference(a: list[RunData], b: list[RunData], task: str, metric: str, replicated: bool
                     ) -> Difference | None:
    """Level a minus level b (means): across replicates (Welch) when seeds are swept, else paired on samples."""
    if replicated:
        va = [v for r in a if (v := r.value(task, metric)) is not None]
        vb = [v for r in b if (v := r.value(task, metric)) is not None]
        return replicate_difference(va, vb, metric)
    return paired_difference([r.sample_scores(task) for r in a], [r.sample_scores(task) for r in b], metric)


@dataclass
class BestRuns:
    """The top run by point estimate and every run its paired interval cannot tell apart from it."""

    score: float | None = None
    runs: list[RunData] = field(default_factory=list)  # the top run first, then those tied with it
    runner_up: RunData | None = None  # the next run by point estimate
    vs: dict[str, Difference | None] = field(default_factory=dict)  # run -> top minus that run


def best_runs(runs: Iterable[RunData], task: str | None, metric: str | None, greater_is_better: bool = True
              ) -> BestRuns:
    """Best run(s) on the headline task; tied unless the paired difference's interval excludes zero."""
    scored = [r for r in runs if r.score is not None]
    if not scored or task is None or metric is None:
        return BestRuns()
    sign = 1 if greater_is_better else -1
    ranked = sorted(scored, key=lambda r: -sign * r.score)  # type: ignore[operator]
    top = ranked[0]
    out = BestRuns(top.score, [top], ranked[1] if len(ranked) > 1 else None)
    for r in ranked[1:]:
        d = run_difference(top, r, task, metric)
        out.vs[r.name] = d
        if (d.known and not d.resolved) if d is not None and d.known else r.score == top.score:
            out.runs.append(r)
    return out


def control_differences(data: ReportData, task: str, metric: str) -> dict[str, Difference | None]:
    """Each fine-tuned run minus its base-model control, paired on the shared test samples."""
    out = {}
    for r in data.runs:
        ctl = data.control_for(r)
        if r.score is not None and ctl is not None and ctl.score is not None:
            out[r.name] = run_difference(r, ctl, task, metric)
    return out


def control_mean_difference(data: ReportData, task: str, metric: str) -> Difference | None:
    """The mean over fine-tuned runs minus the mean over their controls, paired on the shared test samples."""
    pairs = [(r, c) for r in data.runs if r.score is not None and (c := data.control_for(r)) is not None
             and c.score is not None]
    if not pairs:
        return None
    return paired_difference([r.sample_scores(task) for r, _ in pairs], [c.sample_scores(task) for _, c in pairs],
                             metric)


def replicated(data: ReportData) -> bool:
    """Seeds swept with at least two levels: every configuration has replicate runs."""
    return len(data.factors.get(SEED_FACTOR, [])) >= 2
