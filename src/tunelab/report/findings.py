"""Key findings, computed (never hand-written): pure functions of the gathered ReportData.

Thresholds are module constants so the rules are stated once and tested on hand-made cases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import mean
from typing import Any, Iterable

from tunelab.report.data import Point, ReportData, RunData
from tunelab.train import status as st

OVERFIT_MIN_RISE = 0.02  # val loss ends ≥ 2 % above its best, the best lying before the final third
STILL_FALLING_MIN_DROP = 0.01  # val loss fell ≥ 1 % over the last epoch
SCORE_JUMP = 0.10  # ≥ 10 percentage points between two adjacent levels of a numeric factor
MEMORY_MOSTLY_UNUSED = 0.5  # peak below half of the GPU's memory
GPU_TOTAL_KEYS = ("gpu_memory_total_gib", "device_memory_gib", "device_total_memory_gib", "gpu_total_gib")


# ---------------------------------------------------------------- factor effects and best run
@dataclass
class LevelStat:
    level: Any
    mean: float
    n: int
    runs: list[str]


@dataclass
class FactorEffect:
    factor: str
    metric: str  # "score" (a task's primary metric) | "final_val_loss"
    levels: list[LevelStat]
    task: str | None = None  # the task whose primary metric "score" is
    greater_is_better: bool = True
    score_metric: str | None = None  # that primary metric's name (accuracy, mae, ...)

    @property
    def spread(self) -> float | None:
        """Highest minus lowest level mean (None with fewer than two levels measured)."""
        if len(self.levels) < 2:
            return None
        return max(s.mean for s in self.levels) - min(s.mean for s in self.levels)

    @property
    def best(self) -> LevelStat | None:
        if len(self.levels) < 2:
            return None
        pick = max if self.greater_is_better else min
        return pick(self.levels, key=lambda s: s.mean)

    @property
    def worst(self) -> LevelStat | None:
        if len(self.levels) < 2:
            return None
        pick = min if self.greater_is_better else max
        return pick(self.levels, key=lambda s: s.mean)


def metric_of(run: RunData, metric: str, task: str | None = None) -> float | None:
    """"score": the task's primary metric (the headline task's when None); else a summary.json value."""
    if metric == "score":
        v = run.value(task) if task is not None else run.score
    else:
        v = run.get(metric)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def factor_effect(runs: Iterable[RunData], factor: str, levels: list[Any], metric: str, task: str | None = None,
                  greater_is_better: bool | None = None) -> FactorEffect:
    """Mean of `metric` per level of `factor`, over the runs that have it (in the spec's level order)."""
    stats = []
    runs = list(runs)
    for level in levels:
        vals = [(r.name, metric_of(r, metric, task)) for r in runs if r.level(factor) == level]
        vals = [(n, v) for n, v in vals if v is not None]
        if vals:
            stats.append(LevelStat(level, mean(v for _, v in vals), len(vals), [n for n, _ in vals]))
    greater = (metric == "score") if greater_is_better is None else greater_is_better
    return FactorEffect(factor, metric, stats, task, greater)


def factor_effects(data: ReportData) -> list[FactorEffect]:
    """Per swept factor: the effect on each task's primary metric, then on the final validation loss."""
    out = []
    for factor, levels in data.factors.items():
        if len(levels) < 2:
            continue
        effects = [factor_effect(data.completed, factor, levels, "score", t.name, t.greater_is_better)
                   for t in data.tasks]
        for eff, t in zip(effects, data.tasks):
            eff.score_metric = t.primary_metric
        effects.append(factor_effect(data.completed, factor, levels, "final_val_loss"))
        out += [e for e in effects if e.levels]
    return out


def best_runs(runs: Iterable[RunData], greater_is_better: bool = True) -> tuple[float | None, list[RunData]]:
    """The top headline score and every run that reaches it (ties named)."""
    scored = [r for r in runs if r.score is not None]
    if not scored:
        return None, []
    top = (max if greater_is_better else min)(r.score for r in scored)
    return top, [r for r in scored if r.score == top]


def runner_up(runs: Iterable[RunData], top: float | None, greater_is_better: bool = True) -> RunData | None:
    sign = 1 if greater_is_better else -1
    below = [r for r in runs if r.score is not None and top is not None and sign * r.score < sign * top]
    return max(below, key=lambda r: sign * r.score) if below else None


# ---------------------------------------------------------------- training dynamics
@dataclass
class Overfit:
    best_val: float
    best_step: int
    final_val: float
    final_step: int
    train_from: float
    train_to: float

    @property
    def rise(self) -> float:
        return self.final_val / self.best_val - 1 if self.best_val > 0 else math.inf


def overfitting(train: list[Point], val: list[Point], window: float = 1 / 3) -> Overfit | None:
    """Val loss rising while train loss falls over the last part of training.

    The final `window` of steps is the last part. Overfitting: the best val loss lies before that
    part, the final val loss is ≥ OVERFIT_MIN_RISE above it, and train loss at the end is below
    train loss where the last part starts.
    """
    if len(val) < 2 or len(train) < 2:
        return None
    last_step = max(train[-1].step, val[-1].step)
    start = last_step * (1 - window)
    best = min(val, key=lambda p: p.value)
    final = val[-1]
    if best.step >= start or best.value <= 0 or final.value < best.value * (1 + OVERFIT_MIN_RISE):
        return None
    before = [p for p in train if p.step <= start] or train[:1]
    t_from, t_to = before[-1].value, train[-1].value
    if t_to >= t_from:
        return None
    return Overfit(best.value, best.step, final.value, final.step, t_from, t_to)


@dataclass
class StillFalling:
    prev_val: float
    prev_step: int
    final_val: float
    final_step: int

    @property
    def drop(self) -> float:
        return 1 - self.final_val / self.prev_val if self.prev_val > 0 else 0.0


def still_falling(val: list[Point]) -> StillFalling | None:
    """Val loss still falling at the last epoch: the final value is ≥ STILL_FALLING_MIN_DROP below
    the last value logged before the last epoch began (or the one before it, with one epoch)."""
    if len(val) < 2:
        return None
    final = val[-1]
    last_epoch = math.ceil(round(final.epoch, 6)) if final.epoch is not None else None
    prev = None
    if last_epoch is not None and last_epoch >= 2:
        earlier = [p for p in val[:-1] if p.epoch is not None and p.epoch <= last_epoch - 1 + 1e-6]
        prev = earlier[-1] if earlier else None
    prev = prev or val[-2]
    if prev.value <= 0 or final.value > prev.value * (1 - STILL_FALLING_MIN_DROP):
        return None
    return StillFalling(prev.value, prev.step, final.value, final.step)


# ---------------------------------------------------------------- memory
@dataclass
class MemoryUse:
    run: str
    peak_gib: float | None
    kind: str | None
    total_gib: float | None
    device: str | None

    @property
    def judgeable(self) -> bool:
        return self.kind == "cuda_max_allocated" and bool(self.peak_gib) and bool(self.total_gib)

    @property
    def fraction(self) -> float | None:
        return self.peak_gib / self.total_gib if self.judgeable else None


def gpu_total_gib(summary: dict[str, Any]) -> float | None:
    """The GPU's total memory, only where summary.json recorded it."""
    for key in GPU_TOTAL_KEYS:
        v = summary.get(key)
        if isinstance(v, (int, float)) and v > 0:
            return float(v)
    dev = summary.get("device")
    if isinstance(dev, dict):
        for key in ("total_memory_gib", "memory_gib", "total_gib"):
            v = dev.get(key)
            if isinstance(v, (int, float)) and v > 0:
                return float(v)
    return None


def memory_use(run: RunData) -> MemoryUse:
    dev = run.summary.get("device")
    return MemoryUse(run.name, run.get("peak_memory_gib"), run.get("memory_kind"), gpu_total_gib(run.summary),
                     dev.get("name") if isinstance(dev, dict) else dev)


# ---------------------------------------------------------------- issues
@dataclass
class Issue:
    run: str
    kind: str  # failed | interrupted | retried | nan-loss | empty-file | missing-epoch | never-logged | not-evaluated
    detail: str


def error_class(error: str | None) -> str:
    """'OutOfMemoryError' from 'OutOfMemoryError: CUDA out of memory…'; '—' without an error."""
    if not error:
        return "—"
    head = error.split(":", 1)[0].strip()
    return head if head and " " not in head else "error"


def retries(run: RunData) -> int:
    """Extra attempts: ledger attempts beyond the first, or restarts the run's status counted."""
    return max(len(run.attempts) - 1, int(run.status.get("restarts") or 0), run.config.attempt - 1, 0)


def missing_epochs(run: RunData) -> list[int]:
    """Epochs a completed run should have saved but did not (planned epochs without max_steps)."""
    planned = run.planned_epochs
    if run.state != st.COMPLETED or not planned:
        return []
    have = {c.epoch for c in run.checkpoints}
    return [e for e in range(planned) if e not in have]


def run_issues(run: RunData) -> list[Issue]:
    out = []
    if run.state in (st.FAILED, st.INTERRUPTED):
        last = run.attempts[-1] if run.attempts else {}
        reason = run.error or last.get("reason") or (
            f"exit code {last['exit_code']}" if last.get("exit_code") is not None else "no reason recorded")
        word = "failed" if run.state == st.FAILED else "interrupted (cancelled or killed)"
        out.append(Issue(run.name, run.state, f"{word} — {error_class(reason)}: {reason}"))
    n = retries(run)
    if n:
        states = ", ".join(f"#{a.get('attempt')} {a.get('state')} (exit {a.get('exit_code')})" for a in run.attempts)
        out.append(Issue(run.name, "retried", f"{n} retr{'y' if n == 1 else 'ies'}" + (f": {states}" if states else "")))
    if run.nan_rows:
        steps = ", ".join(map(str, run.nan_rows[:5])) + (" …" if len(run.nan_rows) > 5 else "")
        out.append(Issue(run.name, "nan-loss", f"non-finite loss in metrics.jsonl at step(s) {steps}"))
    for c in run.checkpoints:
        for p in c.problems:
            out.append(Issue(run.name, "empty-file" if "0 bytes" in p else "bad-checkpoint", f"epoch_{c.epoch}: {p}"))
    miss = missing_epochs(run)
    if miss:
        out.append(Issue(run.name, "missing-epoch", "no checkpoint for epoch(s) " + ", ".join(map(str, miss))))
    if run.state != st.PENDING and run.metrics_rows == 0 and not run.is_control:
        out.append(Issue(run.name, "never-logged", f"state {run.state} but metrics.jsonl has no rows"))
    if run.state == st.COMPLETED and not run.evals:
        out.append(Issue(run.name, "not-evaluated", "completed but no eval/*/*/scores.json yet"))
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

    @property
    def delta(self) -> float:
        return self.score_high - self.score_low


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
    """Adjacent levels of a numeric factor whose mean score differs by ≥ threshold, per model (the
    headline task, when its primary metric is a fraction such as accuracy)."""
    from tunelab.evaluate.metrics import FRACTIONS

    head = data.headline
    if head is None or (head.primary_metric or "").split("/")[-1] not in FRACTIONS:
        return []
    out = []
    for factor, levels in data.factors.items():
        if factor in ("model", "dataset") or len(levels) < 2:
            continue
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in levels):
            continue
        for model in data.models:
            runs = [r for r in data.completed if r.model == model]
            eff = factor_effect(runs, factor, sorted(levels), "score")
            for a, b in zip(eff.levels, eff.levels[1:]):
                if abs(b.mean - a.mean) >= threshold:
                    out.append(ScoreJump(factor, model, a.level, b.level, a.mean, b.mean, _between(a.level, b.level)))
    return out


@dataclass
class Findings:
    effects: list[FactorEffect] = field(default_factory=list)
    best_score: float | None = None
    best: list[RunData] = field(default_factory=list)
    runner_up: RunData | None = None
    overfit: dict[str, Overfit] = field(default_factory=dict)
    still_falling: dict[str, StillFalling] = field(default_factory=dict)
    memory: list[MemoryUse] = field(default_factory=list)
    jumps: list[ScoreJump] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
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
    unevaluated = [r.name for r in data.completed + data.references if not r.evals]
    if unevaluated:
        steps.append(f"Evaluate {', '.join(unevaluated)}: `tunelab eval {exp}`.")
    if f.still_falling:
        names = list(f.still_falling)
        planned = {r.planned_epochs for r in data.runs if r.name in f.still_falling} - {None}
        more = f" (e.g. {2 * max(planned)} instead of {max(planned)})" if planned else ""
        steps.append(f"Train longer{more}: validation loss was still falling at the last epoch in "
                     f"{', '.join(names)}.")
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
    for j in f.jumps:
        if j.suggest:
            steps.append(f"Try intermediate {j.factor} values {', '.join(map(str, j.suggest))} on {j.model}: the "
                         f"score jumps {100 * j.delta:+.1f} pp between {j.factor}={j.low} and {j.factor}={j.high}.")
    if not steps and data.completed:
        steps.append("Nothing flagged: every run completed and was evaluated, and no rule above fired.")
    return steps


def analyze(data: ReportData) -> Findings:
    f = Findings()
    f.effects = factor_effects(data)
    greater = data.headline.greater_is_better if data.headline else True
    f.best_score, f.best = best_runs(data.runs, greater)
    f.runner_up = runner_up(data.runs, f.best_score, greater)
    for r in data.runs:
        o = overfitting(r.train_loss, r.val_loss)
        if o:
            f.overfit[r.name] = o
        if r.state == st.COMPLETED:
            s = still_falling(r.val_loss)
            if s:
                f.still_falling[r.name] = s
        if r.get("peak_memory_gib") is not None:
            f.memory.append(memory_use(r))
        f.issues += run_issues(r)
    for c in data.references:
        if not c.evals:
            what = "control" if c.is_control else "eval-only checkpoint"
            f.issues.append(Issue(c.name, "not-evaluated", f"{what} has no eval/*/*/scores.json yet"))
    f.jumps = score_jumps(data)
    f.next_steps = next_steps(data, f)
    return f
