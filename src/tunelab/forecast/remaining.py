"""The sweep re-planned while it runs (`tunelab status`, the MCP status tool): what is left of every run, placed by the
plan's own forecast (forecast/deadline.py `judge`) against what the deadline leaves since the sweep started, so one line
says the P90 no longer fits long before the end.

A training run's remaining steps are priced from its live pace, so their interval is a measured one, not the plan's
width for a time it no longer has to guess; parts still to come keep run.yaml's intervals."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, Field

from tunelab.catalog import planning_gpu
from tunelab.forecast.combine import independent
from tunelab.forecast.deadline import DeadlinePlan, DeadlineVerdict, GiveOption, RunTimeline, judge
from tunelab.forecast.evalrun import model_estimate
from tunelab.forecast.gpus import NodeSize
from tunelab.forecast.interval import PRIOR_SIGMA, time_range
from tunelab.forecast.jobstart import JobDispatch, JobStart, eval_start, job_start, with_dispatch
from tunelab.forecast.sweeptime import Sweep, evaluation_dispatch, sweep_devices, sweep_dispatch
from tunelab.fsutil import human_seconds
from tunelab.ledger import history, store
from tunelab.rundir import read_iso, read_metrics, read_status
from tunelab.rundir.config import RunConfig
from tunelab.rundir.estimate import RunEstimate, SourceKind, TimeRange
from tunelab.rundir.experiment import SPEC_FILE, load_runs
from tunelab.rundir.metrics import seconds_left, seconds_per_step, step_paces
from tunelab.rundir.scores import read_scores
from tunelab.rundir.tuned import TRIAL_PREFIX, tune_dir
from tunelab.spec import load_spec
from tunelab.stats.timing import log_spread

NO_DEADLINE = float("inf")


class Phase(StrEnum):
    """Where a run stands for the re-plan (`tunelab status`'s row state and evaluation, read in mcp/models.py)."""

    DONE = "done"  # trained (or a control) and evaluated: nothing left
    EVALUATING = "evaluating"  # trained; its evaluation queued or running: the evaluation left
    TRAINING = "training"  # its steps left at its live pace, then its evaluation
    WAITING = "waiting"  # not started: its whole estimate
    STOPPED = "stopped"  # ended without completing (failed, OOM, cancelled, ...): not counted; a retry adds it


class RunLeft(BaseModel):
    """One run's time left, and where it came from."""

    run: str = Field(description="The run, control or eval-only run.")
    phase: Phase = Field(description="done, evaluating, training, waiting or stopped.")
    eta_s: float | None = Field(None, description="Training left at the run's live pace, s (training only; None: "
                                "no step logged yet).")
    seconds_per_step: float | None = Field(None, description="That live pace: seconds per step over its recent "
                                           "logged rows.")
    left_s: float | None = Field(None, description="Everything left of it (training, evaluation's start, "
                                 "evaluation), s (None: not predicted).")
    left_p10_s: float | None = Field(None, description="Its P10: the parts left combined as independent "
                                     "(forecast/combine.py), s.")
    left_p90_s: float | None = Field(None, description="Its P90, combined the same way, s.")
    source: str = Field("", description="Where the figures came from.")


class SweepRemaining(BaseModel):
    """The sweep as it now looks: elapsed, what is left (P10–P90), the makespan it makes, the deadline's verdict."""

    deadline: str | None = Field(None, description="resources.deadline as given (None: no deadline).")
    deadline_s: float | None = Field(None, description="The deadline, s.")
    started_at: str | None = Field(None, description="The sweep's start: its first job's submission, else its "
                                   "first training start (None: nothing started).")
    elapsed_s: float = Field(0.0, description="Since that start, s.")
    time_left_s: float | None = Field(None, description="deadline − elapsed, s (negative: already past).")
    remaining_s: float | None = Field(None, description="What is left of the sweep (P50), placed on its devices "
                                      "by the plan's forecast, s (None: some run's time is not predicted).")
    remaining_p10_s: float | None = Field(None, description="The same with every run at its P10, s.")
    remaining_p90_s: float | None = Field(None, description="The same with every run at its P90, s.")
    makespan_s: float | None = Field(None, description="elapsed + remaining: the sweep's makespan as it now "
                                     "looks (P50), s.")
    makespan_p10_s: float | None = Field(None, description="elapsed + remaining at P10, s.")
    makespan_p90_s: float | None = Field(None, description="elapsed + remaining at P90, s.")
    planned: TimeRange | None = Field(None, description="The makespan the plan predicted (run.yaml's "
                                      "estimate.makespan_range).")
    verdict: DeadlineVerdict | None = Field(None, description="Against the deadline: fits (at P90), fits_at_p50, "
                                            "does_not_fit or unknown (None: no deadline).")
    gives: list[GiveOption] = Field([], description="Where the P90 no longer fits: what would have to give of the "
                                    "runs not finished (each alone).")
    line: str = Field("", description="The sweep's remaining time and verdict in one line.")
    warning: str = Field("", description="Set once the deadline is no longer met at P90: says so, and what would "
                         "have to give.")
    devices_source: str = Field("", description="The devices runs are placed on, and where that came from.")
    runs: list[RunLeft] = Field([], description="Every run's time left.")
    unknown: list[str] = Field([], description="Runs whose time left is not predicted, and why.")
    notes: list[str] = Field([], description="What the re-plan leaves out.")


def sweep_remaining(experiment_dir: str | Path, phases: dict[str, Phase], now: datetime | None = None,
                    runs: list[RunConfig] | None = None) -> SweepRemaining:
    """The sweep's remaining time against its deadline, from its runs' `phases` (runs not named: waiting)."""
    exp = Path(experiment_dir).resolve()
    runs = runs if runs is not None else load_runs(exp)
    now = now or datetime.now(UTC)
    spec = load_spec(exp / SPEC_FILE)
    deadline, deadline_s = spec.resources.deadline, spec.resources.deadline_s
    resources = runs[0].resources if runs else spec.resources  # as the plan resolved them (the user config merged)
    spec = spec.model_copy(update={"resources": resources})
    estimates = {c.name: c.estimate for c in runs if c.estimate is not None}
    # the GPU the plan priced the runs on (None: planned for this machine's CPU)
    gpu = None if all(e.gpu_memory_gib is None for e in estimates.values()) else planning_gpu(None, resources.gpu)
    past = history.load()  # the job's start-up and dispatch, as the plan reads them (forecast/jobstart.py)
    dispatch = sweep_dispatch(resources, past)
    lefts, lines = [], []
    for cfg in runs:
        model_est = model_estimate(cfg, runs, estimates)
        starts = Starts(job_start(cfg.model.path, gpu, past),
                        eval_start(cfg.model.path, gpu, past, cfg.eval.planned_engine(gpu is not None), model_est),
                        dispatch, evaluation_dispatch(cfg, dispatch))
        left, line = run_left(cfg, phases.get(cfg.name, Phase.WAITING), gpu is not None, starts)
        lefts.append(left)
        if line is not None:
            lines.append(line)
    devices, source = sweep_devices(Sweep(spec, runs, estimates, gpu, NodeSize.of(resources)))
    start = sweep_start(exp, runs)
    until = (sweep_end(runs) or now) if not lines else now  # a finished sweep's makespan stops at its end
    elapsed = max(0.0, (until - start).total_seconds()) if start is not None else 0.0
    left_s = deadline_s - elapsed if deadline_s is not None else NO_DEADLINE
    judged = judge(deadline or "none", left_s, lines, devices, source,
                   resources.runs_per_gpu if gpu is not None else 1)
    planned = next((e.makespan_range for e in estimates.values() if e.makespan_range is not None), None)
    out = _summed(judged, elapsed, deadline_s)
    out = out.model_copy(update=dict(
        deadline=deadline, started_at=start.isoformat(timespec="seconds") if start else None,
        planned=planned, devices_source=source, runs=lefts, unknown=judged.unknown,
        notes=_notes(lefts, len(devices))))
    out.line, out.warning = _words(out)
    return out


def _summed(judged: DeadlinePlan, elapsed: float, deadline_s: float | None) -> SweepRemaining:
    """The judged forecast of what is left, and the makespan it makes with the time already spent."""
    def plus(x: float | None) -> float | None:
        return None if x is None else round(elapsed + x, 1)

    return SweepRemaining(
        deadline_s=deadline_s, elapsed_s=round(elapsed, 1),
        time_left_s=round(deadline_s - elapsed, 1) if deadline_s is not None else None,
        remaining_s=judged.makespan_s, remaining_p10_s=judged.makespan_p10_s, remaining_p90_s=judged.makespan_p90_s,
        makespan_s=plus(judged.makespan_s), makespan_p10_s=plus(judged.makespan_p10_s),
        makespan_p90_s=plus(judged.makespan_p90_s), verdict=judged.verdict if deadline_s is not None else None,
        gives=judged.gives if deadline_s is not None else [])


def sweep_start(exp: Path, runs: list[RunConfig]) -> datetime | None:
    """When the sweep's makespan began: the first job's submission, else the first training start."""
    rows = store.query(exp, "SELECT MIN(submitted_at) AS first FROM jobs")
    starts = [read_iso(rows[0]["first"]) if rows else None]
    trials = sorted(tune_dir(exp).glob(f"*/{TRIAL_PREFIX}*"))
    for run_dir in [cfg.run_dir for cfg in runs] + trials:
        status = read_status(run_dir)
        starts.append(read_iso(status.first_started_at or status.started_at))
    known = [t for t in starts if t is not None]
    return min(known) if known else None


def sweep_end(runs: list[RunConfig]) -> datetime | None:
    """The last training end or evaluation written (report/predicted.py's makespan ends at the same)."""
    ends = [read_iso(read_status(cfg.run_dir).finished_at) for cfg in runs]
    ends += [read_iso(s.evaluated_at) for cfg in runs for s in read_scores(cfg.run_dir)]
    known = [t for t in ends if t is not None]
    return max(known) if known else None


@dataclass(frozen=True)
class Starts:
    """A run's job start-ups, from their one owner (forecast/jobstart.py), as the plan's forecast takes them: the
    training job's where its estimate leaves it out, the evaluation job's (a vLLM server's start included); and each
    job's dispatch, which a job not started yet still pays (the evaluation's where it is a job of its own)."""

    train: JobStart
    evaluation: JobStart
    dispatch: JobDispatch | None = None
    evaluation_dispatch: JobDispatch | None = None  # None: the evaluation is no job of its own (sweeptime.py)

    def evaluation_after(self, phase: Phase) -> JobStart:
        """The evaluation job's start, after its dispatch where the job is one of its own and not started yet."""
        if self.evaluation_dispatch is None or phase == Phase.EVALUATING:
            return self.evaluation
        return with_dispatch(self.evaluation, self.evaluation_dispatch)


def run_left(cfg: RunConfig, phase: Phase, on_gpu: bool, starts: Starts) -> tuple[RunLeft, RunTimeline | None]:
    """One run's time left (and its line for the forecast; None once nothing is left of it)."""
    est = cfg.estimate
    if phase in (Phase.DONE, Phase.STOPPED):
        return RunLeft(run=cfg.name, phase=phase, left_s=0.0, left_p10_s=0.0, left_p90_s=0.0,
                       source="finished" if phase == Phase.DONE else "ended without completing: not counted"), None
    line = RunTimeline(run=cfg.name, kind=cfg.kind, gpus=est.processes if est is not None and on_gpu else 1,
                       peak_memory_gib=est.peak_memory_gib if est is not None else None, train_s=0.0,
                       train_source="no training left")
    parts: list[TimeRange | None] = []
    pace = eta = None
    if phase in (Phase.TRAINING, Phase.WAITING) and cfg.training is not None:
        train, pace, eta = _training_left(cfg, est, phase, starts.train)
        line.train_s, line.train_source = (train.p50_s if train else None), _train_source(train, eta, est)
        parts.append(train)
        waits = starts.dispatch if phase == Phase.WAITING and train is not None else None  # its job not started
        if waits is not None and waits.seconds:
            line.train_start_s, line.train_start_source = waits.seconds, waits.said
            parts.append(waits.range())
    evaluation_start = starts.evaluation_after(phase)
    start, evaluation = _evaluation(est, evaluation_start)
    line.eval_start_s, line.eval_start_source = ((evaluation_start.seconds, evaluation_start.source) if start
                                                 else (0.0, ""))
    line.eval_s, line.eval_source = (evaluation.p50_s if evaluation else None), (
        est.eval_time_source if est is not None and evaluation else "not predicted in run.yaml")
    parts += [start, evaluation]
    line.add_total(parts)  # what is left of a run has no record of its own: its parts as independent
    left = RunLeft(run=cfg.name, phase=phase, eta_s=None if eta is None else round(eta, 1),
                   seconds_per_step=None if pace is None else round(pace, 3), left_s=line.total_s,
                   left_p10_s=line.total_p10_s, left_p90_s=line.total_p90_s,
                   source=line.train_source if phase == Phase.TRAINING else "run.yaml's estimate")
    return left, line


def _training_left(cfg: RunConfig, est: RunEstimate | None, phase: Phase, start: JobStart
                   ) -> tuple[TimeRange | None, float | None, float | None]:
    """(interval, live s/step, live s left) of the training left: a running run's at its pace, else its estimate."""
    if phase == Phase.TRAINING:
        status = read_status(cfg.run_dir)
        rows = read_metrics(cfg.run_dir)
        eta = seconds_left(rows, status.step, status.total_steps)
        if eta is not None:
            paces = step_paces(rows)
            spread = log_spread(paces)
            basis = (f"its live pace over its last {len(paces) + 1} logged rows: the measured kind's width "
                     f"(σ {PRIOR_SIGMA[SourceKind.MEASURED]:.2f})" + (f", the pace's spread σ {spread:.2f}"
                                                                     if spread else ""))
            live = time_range(eta, SourceKind.MEASURED, spread).model_copy(update={"basis": basis})
            return live, seconds_per_step(rows), eta
        if status.step and status.total_steps and status.step >= status.total_steps:
            return TimeRange(basis="its last step is done"), None, 0.0
    if est is None or est.seconds is None:
        return None, None, None
    whole = est.time_range or time_range(est.seconds, est.time_kind or SourceKind.ASSUMED, est.time_spread)
    if est.startup_s is None:  # the estimate's speed came without a start-up: the job's start, as the plan adds
        whole = independent([whole, start.range()]) or whole
    return whole, None, None


def _train_source(train: TimeRange | None, eta: float | None, est: RunEstimate | None) -> str:
    if train is None:
        return "not estimated in run.yaml"
    if eta is not None:
        return f"steps left at {train.basis}"
    return est.time_source if est is not None else train.basis


def _evaluation(est: RunEstimate | None, start: JobStart) -> tuple[TimeRange | None, TimeRange | None]:
    """(the evaluation job's start-up, the evaluation on loaded weights from run.yaml's estimate)."""
    if est is None or est.eval_seconds is None:
        return None, None
    evaluation = est.eval_range or time_range(est.eval_seconds, SourceKind.of_eval_source(est.eval_source))
    return start.range(), evaluation


def _notes(lefts: list[RunLeft], devices: int) -> list[str]:
    notes = ["an evaluation under way counts whole (its progress is not read)",
             "mid-epoch saves of runs not started are not counted (run.yaml's estimate leaves them out)"]
    if devices > 1:
        notes.append("runs are placed longest first, as the plan places them (a running run is not pinned to "
                     "its devices)")
    stopped = [r.run for r in lefts if r.phase == Phase.STOPPED]
    if stopped:
        notes.append(f"not counted, ended without completing: {', '.join(stopped)} (a retry adds its time)")
    return notes


def _words(r: SweepRemaining) -> tuple[str, str]:
    """(the one line, the warning once the P90 misses the deadline)."""
    if r.remaining_s is None or r.remaining_p10_s is None or r.remaining_p90_s is None:
        return "sweep: time left cannot be told (" + "; ".join(r.unknown) + ")", ""
    if r.remaining_s == 0:
        line = f"sweep: done in {human_seconds(r.elapsed_s)}"
    elif r.started_at is None:
        line = (f"sweep: not started; {human_seconds(r.remaining_s)} to run (P10–P90 "
                f"{human_seconds(r.remaining_p10_s)}–{human_seconds(r.remaining_p90_s)})")
    else:
        line = (f"sweep: {human_seconds(r.remaining_s)} left (P10–P90 {human_seconds(r.remaining_p10_s)}–"
                f"{human_seconds(r.remaining_p90_s)}) after {human_seconds(r.elapsed_s)}")
    if r.deadline is None or r.time_left_s is None:
        return line, ""
    verdict = {DeadlineVerdict.FITS: "fits at P90", DeadlineVerdict.FITS_P50: "fits at P50, not at P90",
               DeadlineVerdict.DOES_NOT_FIT: "does not fit"}.get(r.verdict or DeadlineVerdict.UNKNOWN, "unknown")
    line += f"; deadline {r.deadline}: {verdict}"
    if r.verdict not in (DeadlineVerdict.FITS_P50, DeadlineVerdict.DOES_NOT_FIT):
        return line, ""
    over = (r.makespan_p90_s or 0.0) - (r.deadline_s or 0.0)
    gives = "; or ".join(g.change for g in r.gives) or "nothing left to give makes it fit"
    return line, (f"deadline {r.deadline} no longer met at P90: the sweep ends {human_seconds(over)} late at P90 "
                  f"({human_seconds(max(0.0, r.time_left_s))} to the deadline, {human_seconds(r.remaining_p90_s)} "
                  f"still to run); to fit, of the runs not finished: {gives}")
