"""Predicted, then checked: what the plan predicted of each run and the sweep (run.yaml's estimate) against what the
run's files and the ledger measured. A time outside its P10–P90 (without one: more than OVERRUN_MARGIN off) is flagged,
its causes from recorded measurements (report/overruns.py), never a guess.

Each measured figure from one file: training, summary.json's start-up + duration + finish; evaluation, each
scores.json's duration_s, shared evenly among target × tasks run at once; peak memory, summary.json's against the
simulated (judged on a GPU only); makespan, the first job's submission (else first start) to the last end."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from tunelab.ledger import store
from tunelab.report.data import ReportData, RunData
from tunelab.rundir.estimate import TimeRange
from tunelab.rundir.memory import MemoryKind
from tunelab.rundir.scores import read_scores

OVERRUN_MARGIN = 0.25  # a measured figure more than 25 % over its prediction is an overrun
# measured peaks judged against the simulated one (reserved + CUDA context): a GPU's reserved or NVML figure, and its
# allocated peak too — never above reserved, so one 25 % over the prediction is an overrun for certain
JUDGED_MEMORY = (MemoryKind.CUDA_MAX_RESERVED, MemoryKind.NVML_USED, MemoryKind.CUDA_MAX_ALLOCATED)


@dataclass(frozen=True)
class Check:
    """One predicted figure against its measurement."""

    what: str  # training, evaluation, peak memory, makespan
    predicted: float | None
    measured: float | None
    unit: str  # s or GiB
    source: str = ""  # where the prediction came from
    judged: bool = True  # False: shown only (not like with like)
    span: TimeRange | None = None  # the prediction's P10–P90 (None: judged by OVERRUN_MARGIN either way)

    @property
    def ratio(self) -> float | None:
        if self.predicted is None or self.measured is None or self.predicted <= 0:
            return None
        return self.measured / self.predicted

    @property
    def overran(self) -> bool:
        """Above its interval's P90 (without one: more than OVERRUN_MARGIN over)."""
        if not self.judged or self.ratio is None or self.measured is None:
            return False
        return self.measured > self.span.p90_s if self.span is not None else self.ratio > 1 + OVERRUN_MARGIN

    @property
    def underran(self) -> bool:
        """Below its interval's P10 (without one: under 1 / (1 + OVERRUN_MARGIN) of it): a plan too slow sets time
        limits, deadlines and packing as wrongly as one too fast."""
        if not self.judged or self.ratio is None or self.measured is None:
            return False
        return self.measured < self.span.p10_s if self.span is not None else self.ratio < 1 / (1 + OVERRUN_MARGIN)

    @property
    def outside(self) -> bool:
        return self.overran or self.underran


@dataclass
class RunChecks:
    """Every check of one run, and the causes found for its overruns."""

    run: RunData
    checks: list[Check]
    causes: dict[str, list[str]] = field(default_factory=dict)  # check's `what` -> likely causes, largest first


@dataclass
class SweepChecks:
    runs: list[RunChecks]
    totals: list[Check]  # training and evaluation summed, the makespan
    causes: dict[str, list[str]] = field(default_factory=dict)


def measured_training_s(run: RunData) -> float | None:
    s = run.summary
    if s.duration_s is None:
        return None
    return round((s.startup_s or 0.0) + s.duration_s + (s.finish_s or 0.0), 3)


def measured_eval_s(run: RunData) -> float | None:
    """Each target × task's seconds, a wall time shared by `concurrent` of them split among them, summed."""
    scores = read_scores(run.run_dir)
    return round(sum(s.duration_s / max(1, s.concurrent or 1) for s in scores), 3) if scores else None


def run_checks(run: RunData) -> RunChecks:
    est = run.config.estimate
    checks = []
    if run.config.kind == "finetune":
        checks.append(Check("training", est.seconds if est else None, measured_training_s(run), "s",
                            est.time_source if est else "no estimate in run.yaml",
                            span=est.time_range if est else None))
    partial = bool(run.evals and run.eval_gaps)  # part of the planned evaluation: not like with like
    checks.append(Check("evaluation", est.eval_seconds if est else None, measured_eval_s(run), "s",
                        (est.eval_time_source if est else "no estimate in run.yaml")
                        + ("; measured: part of the planned evaluation only" if partial else ""),
                        judged=not partial, span=est.eval_range if est else None))
    if run.config.kind == "finetune":
        kind = run.summary.memory_kind
        checks.append(Check("peak memory", est.peak_memory_gib if est else None, run.summary.peak_memory_gib, "GiB",
                            (est.memory_source if est else "") + (f"; measured: {kind}" if kind else ""),
                            judged=kind in JUDGED_MEMORY))
    return RunChecks(run, checks)


def parse_time(iso: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(iso) if iso else None
    except ValueError:
        return None


def submissions(data: ReportData) -> dict[tuple[str, str], datetime]:
    """(run, job kind) -> its first submission (ledger table jobs; empty for a ledger without one)."""
    out: dict[tuple[str, str], datetime] = {}
    for row in store.query(data.experiment_dir, "SELECT run, kind, submitted_at FROM jobs ORDER BY id"):
        when = parse_time(row["submitted_at"])
        if when is not None:
            out.setdefault((row["run"], row["kind"]), when)
    return out


def measured_makespan_s(data: ReportData, submitted: dict[tuple[str, str], datetime]) -> float | None:
    """First submission (or training start) to the last training end or evaluation written."""
    starts = [t for t in submitted.values()]
    starts += [t for r in data.runs if (t := parse_time(r.status.first_started_at or r.status.started_at))]
    ends = [t for r in data.runs if (t := parse_time(r.status.finished_at))]
    ends += [t for r in data.all for s in read_scores(r.run_dir) if (t := parse_time(s.evaluated_at))]
    if not starts or not ends:
        return None
    return round((max(ends) - min(starts)).total_seconds(), 1)


def _total(what: str, runs: list[RunChecks]) -> Check:
    mine = [c for r in runs for c in r.checks if c.what == what and c.measured is not None]
    if not mine or any(c.predicted is None for c in mine):
        return Check(what, None, sum(c.measured or 0.0 for c in mine) if mine else None, "s",
                     "a run without a prediction")
    span = None
    if all(c.span is not None for c in mine):
        span = TimeRange(p10_s=round(sum(c.span.p10_s for c in mine if c.span), 1),
                         p50_s=round(sum(c.predicted or 0.0 for c in mine), 1),
                         p90_s=round(sum(c.span.p90_s for c in mine if c.span), 1))
    partial = not all(c.judged for c in mine)  # a run's part of an evaluation: the sum is no like with like either
    return Check(what, round(sum(c.predicted or 0.0 for c in mine), 1), round(sum(c.measured or 0.0 for c in mine), 1),
                 "s", "the runs' predictions, summed" + ("; a run's measured time is part of its plan only" if partial
                                                         else ""), judged=not partial, span=span)


def sweep_checks(data: ReportData, submitted: dict[tuple[str, str], datetime]) -> SweepChecks:
    """Every run's checks, their totals and the makespan (causes: report/overruns.py's with_causes)."""
    runs = [run_checks(r) for r in data.all]
    est = next((r.config.estimate for r in data.all if r.config.estimate is not None), None)
    span = Check("makespan", est.makespan_s if est else None, measured_makespan_s(data, submitted), "s",
                 est.makespan_source if est else "no estimate in run.yaml", span=est.makespan_range if est else None)
    return SweepChecks(runs, [_total("training", runs), _total("evaluation", runs), span])
