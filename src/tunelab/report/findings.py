"""Key findings, computed (never hand-written): pure functions of the gathered ReportData, their thresholds module
constants, stated once and tested on hand-made cases."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from statistics import mean
from typing import Any

from tunelab.evaluate.kinds import FRACTIONS
from tunelab.report.checks import (  # noqa: F401  (the report's sections and tests import them from here)
    MEMORY_MOSTLY_UNUSED,
    OVERFIT_MIN_RISE,
    STILL_FALLING_MIN_DROP,
    Issue,
    MemoryUse,
    Overfit,
    StillFalling,
    error_class,
    evaluation_issues,
    memory_use,
    overfitting,
    retries,
    run_issues,
    still_falling,
)
from tunelab.report.comparisons import (
    best_runs,
    control_differences,
    control_mean_difference,
    level_difference,
    replicated,
)
from tunelab.report.data import ReportData, RunData
from tunelab.report.differences import diff_text
from tunelab.report.effects import FactorEffect, LevelStat
from tunelab.report.evidence import ReplicationPlan, replication_plan, replication_step
from tunelab.rundir import layout as st
from tunelab.rundir.experiment import SPEC_FILE
from tunelab.stats.paired import Difference
from tunelab.stats.power import samples_needed
from tunelab.stats.replicates import SEED_FACTOR, replicate_difference

SCORE_JUMP = 0.10  # ≥ 10 percentage points between two adjacent levels of a numeric factor


# ---------------------------------------------------------------- factor effects
def metric_of(run: RunData, metric: str, task: str | None = None) -> float | None:
    """"score": the task's primary metric (the headline task's when None); "final_val_loss": summary.json's."""
    if metric == "score":
        v = run.value(task) if task is not None else run.score
    elif metric == "final_val_loss":
        v = run.summary.final_val_loss
    else:
        raise ValueError(f"no factor effect on {metric!r}: only 'score' and 'final_val_loss'")
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def factor_effect(runs: Iterable[RunData], factor: str, levels: list[Any], metric: str, task: str | None = None,
                  greater_is_better: bool | None = None) -> FactorEffect:
    """Mean of `metric` per level of `factor`, over the runs that have it (in the spec's level order)."""
    stats = []
    runs = list(runs)
    for level in levels:
        vals = [(r.name, v) for r in runs if r.level(factor) == level and (v := metric_of(r, metric, task)) is not None]
        if vals:
            stats.append(LevelStat(level, mean(v for _, v in vals), len(vals), [n for n, _ in vals]))
    greater = (metric == "score") if greater_is_better is None else greater_is_better
    return FactorEffect(factor, metric, stats, task, greater)


def _effect_difference(eff: FactorEffect, runs: list[RunData], replicated: bool) -> Difference | None:
    """Best level minus worst level: paired on the test samples, or across seed replicates."""
    if eff.best is None or eff.worst is None or eff.best is eff.worst:
        return None
    by = {r.name: r for r in runs}
    best, worst = [by[n] for n in eff.best.runs], [by[n] for n in eff.worst.runs]
    if eff.metric == "score" and eff.task and eff.score_metric:
        return level_difference(best, worst, eff.task, eff.score_metric, replicated)
    if replicated:  # final validation loss: only replicates give it an interval
        return replicate_difference([v for r in best if (v := metric_of(r, eff.metric)) is not None],
                                    [v for r in worst if (v := metric_of(r, eff.metric)) is not None], eff.metric)
    return None


def factor_effects(data: ReportData) -> list[FactorEffect]:
    """Per swept factor (seed excluded: it is replication): the effect on each task's primary metric, then
    on the final validation loss; each with the best-minus-worst level difference and its interval."""
    out = []
    reps = replicated(data)
    for factor, levels in data.factors.items():
        if len(levels) < 2 or factor == SEED_FACTOR:
            continue
        effects = [factor_effect(data.completed, factor, levels, "score", t.name, t.greater_is_better)
                   for t in data.tasks]
        for eff, t in zip(effects, data.tasks):
            eff.score_metric = t.primary_metric
        effects.append(factor_effect(data.completed, factor, levels, "final_val_loss"))
        for eff in effects:
            eff.diff = _effect_difference(eff, data.completed, reps)
            eff.replicated = reps
        out += [e for e in effects if e.levels]
    return out


# ---------------------------------------------------------------- score jumps and next steps
@dataclass
class ScoreJump:
    factor: str
    model: str
    low: Any
    high: Any
    score_low: float
    score_high: float
    suggest: list[Any]
    diff: Difference | None = None  # high level minus low level, with its interval
    replicated: bool = False  # seeds are swept: diff is across seed replicates (training noise included)

    @property
    def delta(self) -> float:
        return self.score_high - self.score_low

    @property
    def finding(self) -> bool:
        """The jump exceeds training and test-sample noise: seed replicates and an interval excluding zero."""
        return self.replicated and self.diff is not None and self.diff.resolved

    @property
    def worth_between(self) -> bool:
        """Trying levels in between is worth it unless the jump lies within its interval's noise."""
        return self.diff is None or not self.diff.known or self.diff.resolved


def _between(a: Any, b: Any) -> list[Any]:
    """Levels worth trying between two numeric levels: powers of two for integers, else the geometric mean."""
    lo, hi = sorted((a, b))
    if isinstance(lo, int) and isinstance(hi, int):
        pows = [2 ** k for k in range(1, 20) if lo < 2 ** k < hi]
        if pows:
            return pows
        mid = (lo + hi) // 2
        return [mid] if lo < mid < hi else []
    if lo > 0:
        return [float(f"{math.sqrt(lo * hi):.3g}")]
    return [(lo + hi) / 2]


def score_jumps(data: ReportData, threshold: float = SCORE_JUMP) -> list[ScoreJump]:
    """Adjacent levels of a numeric factor whose mean headline score differs by ≥ threshold, per model, with the
    difference's interval: a finding only across seed replicates with an interval excluding zero."""
    head = data.headline
    if head is None or (head.primary_metric or "").split("/")[-1] not in FRACTIONS:
        return []
    out = []
    reps = replicated(data)
    for factor, levels in data.factors.items():
        if factor in ("model", "dataset", SEED_FACTOR) or len(levels) < 2:
            continue
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in levels):
            continue
        for model in data.models:
            runs = [r for r in data.completed if r.model == model]
            eff = factor_effect(runs, factor, sorted(levels), "score")
            by = {r.name: r for r in runs}
            for a, b in zip(eff.levels, eff.levels[1:]):
                if abs(b.mean - a.mean) < threshold:
                    continue
                d = level_difference([by[n] for n in b.runs], [by[n] for n in a.runs], head.name,
                                     head.primary_metric or "", reps)
                out.append(ScoreJump(factor, model, a.level, b.level, a.mean, b.mean, _between(a.level, b.level),
                                     d, reps))
    return out


@dataclass
class Findings:
    effects: list[FactorEffect] = field(default_factory=list)
    best_score: float | None = None
    best: list[RunData] = field(default_factory=list)  # the top run, then the runs tied with it by interval
    runner_up: RunData | None = None  # the next run by point estimate (tied or not)
    best_vs: dict[str, Difference | None] = field(default_factory=dict)  # run -> top run minus it (paired)
    control_vs: dict[str, Difference | None] = field(default_factory=dict)  # run -> run minus its control
    control_mean: Difference | None = None  # mean over runs minus mean over their controls (paired)
    overfit: dict[str, Overfit] = field(default_factory=dict)
    still_falling: dict[str, StillFalling] = field(default_factory=dict)
    memory: list[MemoryUse] = field(default_factory=list)
    jumps: list[ScoreJump] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    replication: ReplicationPlan | None = None  # seeds that would settle effects measured on one run each
    next_steps: list[str] = field(default_factory=list)


def next_steps(data: ReportData, f: Findings) -> list[str]:
    """Rules on the findings; each step says why and what to run."""
    exp = data.experiment_dir
    steps = []
    bad = [r.name for r in data.runs if r.state in (st.FAILED, st.INTERRUPTED)]
    if bad:
        steps.append(f"Rerun the failed or interrupted run(s) {', '.join(bad)} (they resume from their last "
                     f"checkpoint): `tunelab run {exp} " + " ".join(f"--run {n}" for n in bad) + "`.")
    pending = [r.name for r in data.runs if r.state == st.PENDING]
    if pending:
        steps.append(f"Train the {len(pending)} pending run(s) ({', '.join(pending)}): `tunelab run {exp}`.")
    steps += evaluation_steps(data)
    steps += falling_steps(data, f)
    if f.overfit:
        names = list(f.overfit)
        steps.append(f"Use an earlier checkpoint or fewer epochs for {', '.join(names)}: validation loss rose "
                     "while training loss fell (evaluate every epoch with `--epochs all`).")
    unused = [m for m in f.memory if m.fraction is not None and m.fraction < MEMORY_MOSTLY_UNUSED]
    if unused:
        worst = min(unused, key=lambda m: m.fraction or 0)
        steps.append(f"Raise the micro-batch (`batch_size`) or sequence length: {len(unused)} run(s) used under "
                     f"{MEMORY_MOSTLY_UNUSED:.0%} of GPU memory (least: {worst.run}, {worst.peak_gib:.1f} of "
                     f"{worst.total_gib:.0f} GiB).")
    steps += resolution_steps(data, f)

    metric = data.headline.primary_metric if data.headline else None
    if f.replication is not None:
        steps.append(replication_step(f.replication, data.experiment_dir))
    for j in f.jumps:
        if j.suggest and j.worth_between:
            steps.append(f"Try intermediate {j.factor} values {', '.join(map(str, j.suggest))} on {j.model}: the "
                         f"score jumps {diff_text(j.diff, metric, j.delta)} between {j.factor}={j.low} and "
                         f"{j.factor}={j.high}" + _jump_caveat(j))
    steps += issue_steps(f)
    if not steps and data.completed:
        steps.append("Nothing flagged: every run completed and was evaluated, and no rule above fired.")
    return steps


# issue kinds a step of their own answers (or that need none: a retry that then completed)
STEPPED = ("failed", "interrupted", "retried", "not-evaluated", "partly-evaluated", "absent")


def issue_steps(f: Findings) -> list[str]:
    """The issues no other step answers (a missing or empty checkpoint, a NaN loss, a silent run, data wait): named,
    so that "Nothing flagged" is never said beside an Issues table that flags something."""
    left = [i for i in f.issues if i.kind not in STEPPED]
    if not left:
        return []
    return ["Look into what the Issues section flags before relying on these runs: "
            + "; ".join(f"{i.run} ({i.kind})" for i in left) + "."]


def evaluation_steps(data: ReportData) -> list[str]:
    """Evaluate what is missing, re-evaluate what was cut short (--force), scaffold designed runs missing."""
    exp = data.experiment_dir
    steps = []
    if data.absent:
        steps.append(f"Scaffold the run(s) experiment.yaml designs that are not in the experiment "
                     f"({', '.join(a.name for a in data.absent)}): `tunelab scaffold {exp / SPEC_FILE} --out {exp}`, "
                     "then train and evaluate them.")
    targets = [r for r in data.completed + data.references if r.evals and any(g.samples is None for g in r.eval_gaps)]
    unevaluated = [r.name for r in data.completed + data.references if not r.evals]
    if unevaluated or targets:
        what = ", ".join(unevaluated + [f"{r.name} (" + ", ".join(g.text for g in r.eval_gaps if g.samples is None)
                                         + ")" for r in targets])
        steps.append(f"Evaluate {what}: `tunelab eval {exp}`.")
    short = [r for r in data.completed + data.references if any(g.samples is not None for g in r.eval_gaps)]
    for r in short:
        gaps = ", ".join(g.text for g in r.eval_gaps if g.samples is not None)
        steps.append(f"Evaluate {r.name} again on all samples ({gaps}): `tunelab eval {exp} --run {r.name} --force`.")
    return steps


def _jump_caveat(j: ScoreJump) -> str:
    if j.finding:
        return "."
    if j.replicated:
        return " (no interval across seed replicates: an observation)."
    return " (one training run per level: an observation until replicated)."


def falling_steps(data: ReportData, f: Findings) -> list[str]:
    """Train longer where val loss fell beyond its noise; validate more often where too few measure it."""
    steps = []
    sure = [n for n, s in f.still_falling.items() if s.beyond_noise]
    unsure = [n for n, s in f.still_falling.items() if s.margin is None]
    planned = {p for r in data.runs if r.name in f.still_falling and (p := r.planned_epochs) is not None}
    more = f" (e.g. {2 * max(planned)} instead of {max(planned)})" if planned else ""
    if sure:
        steps.append(f"Train longer{more}: validation loss was still falling at the last epoch, beyond its "
                     f"checkpoint-to-checkpoint noise, in {', '.join(sure)}.")
    if unsure:
        per_epoch = [n // e for r in data.runs if r.name in unsure
                     for n, e in [(r.summary.steps, r.planned_epochs)] if isinstance(n, int) and e]
        every = f" ≤ {max(min(per_epoch) // 3, 1)}" if per_epoch else ""
        steps.append(f"Validate at least 3 times an epoch (`training.validation_every_steps`{every}) before "
                     f"training longer{more}: validation loss fell over the last epoch in {', '.join(unsure)}, but "
                     "too few validations span it to tell a trend from checkpoint-to-checkpoint noise.")
    return steps


def _more_data(diff: Difference, metric: str | None, n: int, seeded: bool) -> str:
    """What would resolve a difference: more test samples (how many, for accuracy-like metrics) or seeds."""
    need = samples_needed(diff.estimate) if (metric or "").split("/")[-1] in FRACTIONS else None
    more = (f"evaluate on ≈{need} test samples (now {n}): that many resolve a difference of "
            f"{100 * abs(diff.estimate):.1f} pp (alpha 0.05, power 0.8, unpaired — paired needs fewer)"
            ) if need and need > n else "evaluate on more test samples"
    seeds = "more seeds" if seeded else "seed replicates (priced in a step below)"
    return f"{more}, or add {seeds}"


def resolution_steps(data: ReportData, f: Findings) -> list[str]:
    """Decisions the data cannot make: a best run tied within noise, a factor whose effect is unresolved."""
    head = data.headline
    if head is None:
        return []
    metric = head.primary_metric
    steps = []
    if len(f.best) > 1 and f.runner_up is not None and (d := f.best_vs.get(f.runner_up.name)) is not None:
        top = f.best[0]
        steps.append(f"Best run undecided: {', '.join(r.name for r in f.best)} cannot be told apart on {d.n} test "
                     f"samples ({top.name} − {f.runner_up.name}: {diff_text(d, metric)}); "
                     + _more_data(d, metric, d.n, replicated(data)) + ".")
    for eff in f.effects:
        d, best, worst = eff.diff, eff.best, eff.worst
        if eff.metric == "score" and eff.task == head.name and d is not None and d.known and not d.resolved \
                and best is not None and worst is not None:
            steps.append(f"The choice of {eff.factor} hinges on a difference the data cannot resolve on {eff.task} "
                         f"({best.level} − {worst.level}: {diff_text(d, metric)}); "
                         + _more_data(d, metric, d.n, replicated(data)) + ".")
    return steps


def analyze(data: ReportData) -> Findings:
    f = Findings()
    f.effects = factor_effects(data)
    head = data.headline
    best = best_runs(data.runs, head.name if head else None, head.primary_metric if head else None,
                     head.greater_is_better if head else True)
    f.best_score, f.best, f.runner_up, f.best_vs = best.score, best.runs, best.runner_up, best.vs
    if head is not None and head.primary_metric:
        f.control_vs = control_differences(data, head.name, head.primary_metric)
        f.control_mean = control_mean_difference(data, head.name, head.primary_metric)
    for r in data.runs:
        o = overfitting(r.train_loss, r.val_loss)
        if o:
            f.overfit[r.name] = o
        if r.state == st.COMPLETED:
            s = still_falling(r.val_loss)
            if s:
                f.still_falling[r.name] = s
        if r.summary.peak_memory_gib is not None:
            f.memory.append(memory_use(r))
        f.issues += run_issues(r)
    for c in data.references:
        if not c.evals:
            what = "control" if c.is_control else "eval-only checkpoint"
            f.issues.append(Issue(c.name, "not-evaluated", f"{what} has no eval/*/*/scores.json yet"))
        f.issues += evaluation_issues(c)
    f.issues += [Issue(a.name, "absent", f"designed by experiment.yaml, but `{a.rel_dir}/` is not in the experiment")
                 for a in data.absent]
    if data.design_error:
        f.issues.append(Issue("—", "design-unchecked", "the runs experiment.yaml designs could not be listed to check "
                              f"that each has its directory: {data.design_error}"))
    f.jumps = score_jumps(data)
    f.replication = replication_plan(data, f.effects)
    f.next_steps = next_steps(data, f)
    return f
