"""Why a run (or the sweep) took longer than predicted: each likely cause priced in seconds from what was recorded (data
wait, failed attempts, start-up, speed against the prediction; an evaluation's source and tokens; jobs' queue waits),
largest first; one explaining under MIN_SHARE of the excess is left out."""

from __future__ import annotations

from datetime import datetime

from tunelab.execute.executor import JobKind
from tunelab.execute.failures import FailureKind
from tunelab.report.checks import DATA_WAIT_FLAG
from tunelab.report.data import ReportData, RunData
from tunelab.report.predicted import OVERRUN_MARGIN, Check, SweepChecks, parse_time
from tunelab.rundir.scores import read_scores

MIN_SHARE = 0.1  # a cause explaining less than 10 % of the excess is not named
UNEXPLAINED = "not explained by what was recorded"


def _ranked(priced: list[tuple[float, str]], excess: float) -> list[str]:
    kept = sorted((p for p in priced if p[0] > 0 and p[0] >= MIN_SHARE * excess), key=lambda p: -p[0])
    return [text for _, text in kept] or [f"{UNEXPLAINED} (over by {excess:.0f} s)"]


def run_causes(run: RunData, check: Check) -> list[str]:
    if check.what == "training":
        return training_causes(run, check)
    if check.what == "evaluation":
        return evaluation_causes(run, check)
    return [f"the simulated peak ({check.source}) was below the measured one"]


def training_causes(run: RunData, check: Check) -> list[str]:
    """Data wait, failed attempts, start-up and speed, each in seconds over the prediction."""
    s, est = run.summary, run.config.estimate
    excess = (check.measured or 0.0) - (check.predicted or 0.0)
    priced: list[tuple[float, str]] = []
    if s.data_wait_s and (s.data_wait_fraction or 0.0) > DATA_WAIT_FLAG:
        priced.append((s.data_wait_s, f"data wait: the training loop waited {s.data_wait_s:.0f} s for batches, "
                       f"{s.data_wait_fraction:.0%} of training time (summary.json)"))
    lost = _lost_attempts(run)
    if lost:
        priced.append((lost, f"retries: {lost:.0f} s in attempts that did not complete (ledger attempts)"))
    if est is not None and est.startup_s is not None and s.startup_s is not None:
        priced.append((s.startup_s - est.startup_s, f"start-up: {s.startup_s:.0f} s measured, {est.startup_s:.0f} s "
                       "predicted (summary.json startup_s)"))
    speed = _speed_cause(run)
    if speed:
        priced.append(speed)
    return _ranked(priced, excess)


def _lost_attempts(run: RunData) -> float:
    """Seconds of the run's training attempts that ended in anything but completion."""
    total = 0.0
    for a in run.attempts:
        start, end = parse_time(a.started_at), parse_time(a.finished_at)
        if a.state not in (None, FailureKind.COMPLETED) and start and end:
            total += (end - start).total_seconds()
    return total


def _speed_cause(run: RunData) -> tuple[float, str] | None:
    """The training's tokens at the measured speed against the predicted one (every process together)."""
    s, est = run.summary, run.config.estimate
    if est is None or not est.tokens_per_s or not s.tokens_per_s or not s.tokens:
        return None
    predicted = est.tokens_per_s * max(1, est.processes) * (est.scaling_efficiency or 1.0)
    seconds = s.tokens / s.tokens_per_s - s.tokens / predicted
    if s.tokens_per_s * (1 + OVERRUN_MARGIN) >= predicted:
        return None
    text = (f"training speed mis-predicted: {s.tokens_per_s:,.0f} tokens/s measured, {predicted:,.0f} predicted "
            f"({est.time_source})")
    applied = [f"{lv.lever} {lv.value}" for lv in est.levers if lv.applied]
    if applied:
        text += f"; the levers it rested on ({', '.join(applied)}) did not have their predicted effect"
    return seconds, text


def evaluation_causes(run: RunData, check: Check) -> list[str]:
    """What the evaluation's prediction rested on, against what it measured (scores.json)."""
    est = run.config.estimate
    scores = read_scores(run.run_dir)
    samples = sum(s.samples for s in scores)
    generated = [s.generated_tokens for s in scores if s.generated_tokens is not None]
    out = []
    if est is not None and est.eval_source and est.eval_source != "history":
        out.append(f"generation speed {est.eval_source}, not measured on this model and task ({est.eval_time_source})")
    if generated and samples:
        limit = max((s.max_tokens or 0) for s in scores)
        out.append(f"{sum(generated) / samples:.1f} tokens generated per sample (max_tokens {limit}; the prediction "
                   "took the references' lengths)")
    shared = max((s.concurrent or 1) for s in scores) if scores else 1
    if shared > 1:
        out.append(f"{shared} target × tasks ran at once: their wall time is shared evenly")
    return out or [UNEXPLAINED]


def queue_waits(data: ReportData, submitted: dict[tuple[str, str], datetime]) -> list[tuple[float, str]]:
    """(seconds, run) each training job waited between submission and start (its first attempt's start)."""
    out = []
    for r in data.runs:
        sub = submitted.get((r.name, JobKind.TRAIN))
        start = min((t for a in r.attempts if (t := parse_time(a.started_at))), default=None)
        if sub is not None and start is not None and start > sub:
            out.append(((start - sub).total_seconds(), r.name))
    return sorted(out, reverse=True)


def sweep_causes(data: ReportData, sweep: SweepChecks, submitted: dict[tuple[str, str], datetime]) -> list[str]:
    """The makespan's overrun: jobs queued, and the runs whose own figures overran."""
    span = sweep.totals[-1]
    excess = (span.measured or 0.0) - (span.predicted or 0.0)
    priced: list[tuple[float, str]] = []
    waits = queue_waits(data, submitted)
    if waits:
        total, (longest, who) = sum(w for w, _ in waits), waits[0]
        priced.append((longest, f"queueing: training jobs waited {total:.0f} s between submission and start, the "
                       f"longest {who} {longest:.0f} s (ledger jobs and attempts)"))
    for r in sweep.runs:
        for c in r.checks:
            if c.overran and c.unit == "s":
                over = (c.measured or 0.0) - (c.predicted or 0.0)
                why = "; ".join(r.causes[c.what])
                priced.append((over, f"{r.run.name}'s {c.what} overran by {over:.0f} s ({why})"))
    return _ranked(priced, excess)


def with_causes(data: ReportData, sweep: SweepChecks, submitted: dict[tuple[str, str], datetime]) -> SweepChecks:
    """The sweep's checks with the likely causes of every overrun filled in."""
    for r in sweep.runs:
        r.causes = {c.what: run_causes(r.run, c) if c.overran else under_causes(r.run, c)
                    for c in r.checks if c.outside}
    if sweep.totals[-1].overran:
        sweep.causes["makespan"] = sweep_causes(data, sweep, submitted)
    elif sweep.totals[-1].underran:
        sweep.causes["makespan"] = [c for r in sweep.runs for c in
                                    (f"{r.run.name}'s {k}: {'; '.join(v)}" for k, v in r.causes.items())] or [UNEXPLAINED]
    return sweep


def under_causes(run: RunData, check: Check) -> list[str]:
    """Why a time came in under its interval: what its prediction rested on, against what the run measured."""
    est, s = run.config.estimate, run.summary
    out = []
    source = (est.time_source if check.what == "training" else est.eval_time_source) if est else ""
    if "under contention" in source or "contended" in source:
        out.append(f"the prediction rests on measurements timed under contention ({source})")
    if check.what == "training" and est is not None:
        if est.startup_s and s.startup_s is not None and s.startup_s < est.startup_s / (1 + OVERRUN_MARGIN):
            out.append(f"start-up predicted {est.startup_s:.1f} s, measured {s.startup_s:.1f} s ({est.startup_kind})")
        predicted = (est.tokens_per_s or 0.0) * max(1, est.processes) * (est.scaling_efficiency or 1.0)
        if predicted and s.tokens_per_s and s.tokens_per_s > predicted * (1 + OVERRUN_MARGIN):
            out.append(f"training speed under-predicted: {s.tokens_per_s:,.0f} tokens/s measured, {predicted:,.0f} "
                       f"predicted ({est.time_kind}: {est.time_source})")
    if check.what == "evaluation" and est is not None and est.eval_source not in ("", "history"):
        out.append(f"generation speed {est.eval_source}, not measured on this model and task")
    return out or [UNEXPLAINED]
