"""Checks of each run, computed (never hand-written): training dynamics, GPU memory, and issues (failures, retries, NaN
losses, missing checkpoints). Thresholds are module constants, stated once and tested."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tunelab.execute.attempts import AttemptRow
from tunelab.execute.failures import exited_zero
from tunelab.report.data import Point, RunData
from tunelab.rundir.layout import COMPLETED, FAILED, INTERRUPTED, PENDING
from tunelab.rundir.memory import MemoryKind
from tunelab.rundir.status import Status
from tunelab.rundir.summary import Summary

OVERFIT_MIN_RISE = 0.02  # val loss ends ≥ 2 % above its best, the best lying before the final third
STILL_FALLING_MIN_DROP = 0.01  # val loss fell ≥ 1 % over the last epoch (then set against its noise)
MEMORY_MOSTLY_UNUSED = 0.5  # peak below half of the GPU's memory
DATA_WAIT_FLAG = 0.05  # the training loop waited for data more than 5 % of training time


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
    """Val loss rising while train loss falls over the last `window` steps: the best val loss lies before them, the
    final one is ≥ OVERFIT_MIN_RISE above it, and train loss fell over them."""
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
    """Val loss lower at the end of the last epoch than at its start; a finding only beyond its noise (the last epoch's
    validations' scatter about a line), an observation with fewer than three validations there."""

    prev_val: float
    prev_step: int
    final_val: float
    final_step: int
    points: int = 2  # validations from the last epoch's start (the value logged before it) to the end
    fitted_fall: float | None = None  # the fall along a least-squares line through those validations
    margin: float | None = None  # 95 % half-width of fitted_fall (t interval from the residual scatter)

    @property
    def drop(self) -> float:
        return 1 - self.final_val / self.prev_val if self.prev_val > 0 else 0.0

    @property
    def beyond_noise(self) -> bool:
        """The fitted fall's 95 % interval excludes zero: a trend, not checkpoint-to-checkpoint wobble."""
        return self.fitted_fall is not None and self.margin is not None and self.fitted_fall > self.margin


def _fitted_fall(points: list[Point]) -> tuple[float | None, float | None]:
    """(fall over the window along a fitted line, its 95 % half-width); (None, None) under three points."""
    from scipy import stats

    if len(points) < 3 or len({p.step for p in points}) < 2:
        return None, None
    fit = stats.linregress([p.step for p in points], [p.value for p in points])
    span = points[-1].step - points[0].step
    t = float(stats.t.ppf(0.975, len(points) - 2))
    return float(-fit.slope * span), float(t * fit.stderr * span)


def still_falling(val: list[Point]) -> StillFalling | None:
    """Val loss still falling at the last epoch by ≥ STILL_FALLING_MIN_DROP, set against the validations' scatter."""
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
    window = [p for p in val if prev.step <= p.step <= final.step]
    fall, margin = _fitted_fall(window)
    return StillFalling(prev.value, prev.step, final.value, final.step, len(window), fall, margin)


# ---------------------------------------------------------------- memory
@dataclass
class MemoryUse:
    run: str
    peak_gib: float | None
    kind: MemoryKind | None
    total_gib: float | None
    device: str | None

    @property
    def judgeable(self) -> bool:
        return self.kind == MemoryKind.CUDA_MAX_ALLOCATED and bool(self.peak_gib) and bool(self.total_gib)

    @property
    def fraction(self) -> float | None:
        """Peak over the GPU's total (None where it cannot be judged)."""
        if not self.judgeable or self.peak_gib is None or self.total_gib is None:
            return None
        return self.peak_gib / self.total_gib


def memory_use(run: RunData) -> MemoryUse:
    """The run's peak against its GPU's total memory, where summary.json recorded it."""
    s = run.summary
    total = s.gpu_memory_total_gib if s.gpu_memory_total_gib and s.gpu_memory_total_gib > 0 else None
    return MemoryUse(run.name, s.peak_memory_gib, s.memory_kind, total, s.device)


# ---------------------------------------------------------------- issues
@dataclass
class Issue:
    run: str
    kind: str  # failed | interrupted | retried | nan-loss | empty-file | bad-checkpoint | missing-epoch | never-logged
    #            | not-evaluated | partly-evaluated | data-wait | absent | design-unchecked
    detail: str


def error_class(error: str | None) -> str:
    """'OutOfMemoryError' from 'OutOfMemoryError: CUDA out of memory…'; '—' without an error."""
    if not error:
        return "—"
    head = error.split(":", 1)[0].strip()
    return head if head and " " not in head else "error"


def retries(run: RunData) -> int:
    """Extra attempts: ledger attempts beyond the first, or restarts the run's status counted."""
    return max(len(run.attempts) - 1, int(run.status.restarts or 0), run.config.attempt - 1, 0)


def missing_epochs(run: RunData) -> list[int]:
    """Epochs a completed run should have saved but did not (planned epochs without max_steps)."""
    planned = run.planned_epochs
    if run.state != COMPLETED or not planned:
        return []
    have = {c.epoch for c in run.checkpoints}
    return [e for e in range(planned) if e not in have]


def data_wait_issue(run: str, summary: Summary) -> Issue | None:
    """The input pipeline starved training: data wait above DATA_WAIT_FLAG of training time (summary.json)."""
    frac, wait = summary.data_wait_fraction, summary.data_wait_s
    if not isinstance(frac, (int, float)) or frac <= DATA_WAIT_FLAG:
        return None
    workers = summary.dataloader_workers
    now = f" (now {workers}, {summary.dataloader_workers_source})" if workers is not None else ""
    return Issue(run, "data-wait", f"waited {frac:.0%} of training time for data ({wait} s): raise "
                 f"training.dataloader_workers{now}, and give the job the CPUs for them")


def _exit_reason(last: AttemptRow | None, status: Status) -> str:
    """A failed run's reason when its files and attempts give none: its job's exit (an exit 0 says status.json's)."""
    if last is None or last.exit_code is None:
        return "no reason recorded"
    return exited_zero(status) if last.exit_code == 0 else f"exit code {last.exit_code}"


def run_issues(run: RunData) -> list[Issue]:
    out = []
    wait = data_wait_issue(run.name, run.summary)
    if wait:
        out.append(wait)
    if run.state in (FAILED, INTERRUPTED):
        last = run.attempts[-1] if run.attempts else None
        reason = run.error or (last and last.reason) or _exit_reason(last, run.status)
        word = "failed" if run.state == FAILED else "interrupted (cancelled or killed)"
        out.append(Issue(run.name, run.state, f"{word} — {error_class(reason)}: {reason}"))
    n = retries(run)
    if n:
        states = ", ".join(f"#{a.attempt} {a.state} (exit {a.exit_code})" for a in run.attempts)
        out.append(Issue(run.name, "retried", f"{n} retr{'y' if n == 1 else 'ies'}" + (f": {states}" if states else "")))
    if run.nan_rows:
        steps = ", ".join(map(str, run.nan_rows[:5])) + (" …" if len(run.nan_rows) > 5 else "")
        out.append(Issue(run.name, "nan-loss", f"non-finite loss in metrics.jsonl at step(s) {steps}"))
    for c in run.checkpoints:
        where = run.checkpoint_name(c.epoch, f"epoch_{c.epoch}")
        for p in c.problems:
            out.append(Issue(run.name, "empty-file" if "0 bytes" in p else "bad-checkpoint", f"{where}: {p}"))
    miss = missing_epochs(run)
    if miss:
        out.append(Issue(run.name, "missing-epoch", "no checkpoint for epoch(s) "
                         + ", ".join(run.checkpoint_name(e, str(e)) for e in miss)))
    if run.state != PENDING and run.metrics_rows == 0 and not run.is_control:
        out.append(Issue(run.name, "never-logged", f"state {run.state} but metrics.jsonl has no rows"))
    if run.state == COMPLETED and not run.evals:
        out.append(Issue(run.name, "not-evaluated", "completed but no eval/*/*/scores.json yet"))
    if run.state == COMPLETED:
        out += evaluation_issues(run)
    return out


def evaluation_issues(run: RunData) -> list[Issue]:
    """A run evaluated in part: planned checkpoints × tasks missing, or run on fewer samples than the split holds."""
    gaps = run.eval_gaps if run.evals else []
    if not gaps:
        return []
    shown = "; ".join(g.text for g in gaps[:6]) + (f"; … ({len(gaps)} in all)" if len(gaps) > 6 else "")
    return [Issue(run.name, "partly-evaluated", f"{shown} (planned: eval.epochs {run.config.eval.epochs!s} × "
                  "eval.tasks, each on its split's samples)")]
