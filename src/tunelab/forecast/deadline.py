"""The deadline verdict: does the whole sweep (training with its levers, every target × task evaluated, each job's
start) fit the wall-clock budget on the devices it may use, and how surely?

The runs are placed longest first by the executors' own scheduler (execute/schedule.py `forecast`) three times: every
run at its P10, P50 and P90. The runs' errors are taken as going the same way, since one source's bias and one machine's
load move every run of a sweep alike. It fits at P90, at P50 only, or not — then what would have to give (runs, epochs,
evaluation samples; with `tune:` also trials or budget) — or cannot be told."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import StrEnum

from pydantic import BaseModel, Field

from tunelab.execute.schedule import Device, RunNeed, forecast
from tunelab.forecast.combine import independent
from tunelab.rundir.estimate import TimeRange

SEARCH_STEPS = 30  # bisection steps of a fraction (epochs, eval samples) that fits


class DeadlineVerdict(StrEnum):
    """Fits at P90, fits at P50 but not P90, does not fit, or unknown (a figure is not predicted)."""

    FITS = "fits"
    FITS_P50 = "fits_at_p50"
    DOES_NOT_FIT = "does_not_fit"
    UNKNOWN = "unknown"


class RunTimeline(BaseModel):
    """One run's time on its devices, each part with its source, and where the forecast places it."""

    run: str = Field(description="The run, control or eval-only model.")
    kind: str = Field(description="finetune, control or eval_only.")
    gpus: int = Field(1, description="Devices it holds.")
    peak_memory_gib: float | None = Field(None, description="Its predicted peak per device (runs share a GPU "
                                          "only where their peaks fit together).")
    train_start_s: float = Field(0.0, description="The training job's start and model load where the training "
                                 "estimate leaves it out, s.")
    train_start_source: str = Field("", description="Where that came from.")
    warm_s: float = Field(0.0, description="What its training job skips of that start where its devices ran a job "
                          "before (a local CPU lane's later jobs fork from one import: execute/local_jobs.py), s.")
    train_s: float | None = Field(None, description="Training wall time with the chosen levers, s (0: none).")
    train_source: str = Field("", description="Where the training time came from.")
    saves_s: float = Field(0.0, description="Mid-epoch checkpoint saves, s.")
    saves_source: str = Field("", description="Where the save cost came from.")
    eval_start_s: float = Field(0.0, description="The evaluation job's start and model load, s.")
    eval_start_source: str = Field("", description="Where that came from.")
    eval_s: float | None = Field(None, description="Evaluation of every target × task, s.")
    eval_source: str = Field("", description="Where the evaluation time came from.")
    eval_targets: int = Field(0, description="Checkpoints (or models) evaluated.")
    eval_samples: int = Field(0, description="Samples of one target over all tasks.")
    total_s: float | None = Field(None, description="train start + train + saves + eval start + eval, s.")
    total_p10_s: float | None = Field(None, description="Its P10: the parts combined as the records say they err "
                                      "(forecast/combine.py), s.")
    total_p90_s: float | None = Field(None, description="Its P90, combined the same way, s.")
    devices: list[str] = Field([], description="Where the forecast places it.")
    start_s: float | None = Field(None, description="When it starts in the forecast, s.")
    end_s: float | None = Field(None, description="When it ends in the forecast, s.")

    def add_total(self, parts: Sequence[TimeRange | None]) -> None:
        """The run's total for plan and re-plan: parts at P50, P10/P90 combined as independent; unknown if one is."""
        if self.train_s is None or self.eval_s is None:
            return
        self.total_s = round(self.train_start_s + self.train_s + self.saves_s + self.eval_start_s + self.eval_s, 1)
        total = independent(parts)
        self.total_p10_s, self.total_p90_s = ((total.p10_s, total.p90_s) if total is not None
                                              else (None, None) if self.total_s else (0.0, 0.0))


class SearchLine(BaseModel):
    """The learning-rate search on the sweep's timeline: before the runs, one trial at a time."""

    combinations: int = Field(description="Combinations still to search (searched ones are not counted).")
    trials: int = Field(description="Trials per combination (tune.trials).")
    budget: float = Field(description="The fraction of a run's steps a trial trains at most (tune.budget).")
    seconds: float | None = Field(None, description="The search's predicted time (P50), s (None: not predicted).")
    p10_s: float | None = Field(None, description="The same at P10, s.")
    p90_s: float | None = Field(None, description="The same at P90, s.")
    source: str = Field("", description="Where the figures came from.")
    searched: list[str] = Field([], description="Combinations already searched (tune/best.json): not counted.")


class GiveOption(BaseModel):
    """One way to make the sweep fit, and the makespan it gives."""

    what: str = Field(description="runs, epochs, eval_samples, or with a search: trials or budget.")
    change: str = Field(description="What would change, in words.")
    makespan_s: float | None = Field(None, description="The predicted makespan with it, s.")


class SweepForecast(BaseModel):
    """The sweep's predicted wall time and every run's placement (plan.md's Schedule; `plan --json`'s forecast)."""

    makespan_s: float | None = Field(None, description="Predicted wall time of the whole sweep (P50; a search "
                                     "included), s.")
    makespan_p10_s: float | None = Field(None, description="The makespan with every run at its P10, s.")
    makespan_p90_s: float | None = Field(None, description="The makespan with every run at its P90, s.")
    longest_run_s: float | None = Field(None, description="The longest run's time: no placement goes below it.")
    devices: list[str] = Field([], description="The devices runs are placed on.")
    devices_source: str = Field("", description="Where the devices came from (visible GPUs, slurm.pack_gpus, …).")
    runs_per_device: int = Field(1, description="Runs sharing one device at most (resources.runs_per_gpu).")
    runs: list[RunTimeline] = Field([], description="Every run's time and placement.")
    unknown: list[str] = Field([], description="Runs whose time is not predicted, and why.")
    notes: list[str] = Field([], description="What the forecast leaves out.")

    @classmethod
    def of(cls, judged: SweepForecast) -> SweepForecast:
        """The forecast alone of a verdict (forecast/sweeptime.plan_forecast judges the runs against no deadline)."""
        return cls.model_validate(judged.model_dump(include=set(cls.model_fields)))


class DeadlinePlan(SweepForecast):
    """The sweep against its deadline: the verdict, the makespan and every figure with its source."""

    deadline: str = Field(description="The deadline as given ('6h').")
    deadline_s: float = Field(description="The deadline, s.")
    verdict: DeadlineVerdict = Field(description="fits (at P90), fits_at_p50, does_not_fit or unknown.")
    slack_s: float | None = Field(None, description="deadline − P90 makespan, s (negative: over at P90).")
    search: SearchLine | None = Field(None, description="With tune: the learning-rate search before the runs "
                                      "(its time is in the makespan).")
    gives: list[GiveOption] = Field([], description="Where it does not fit: what would have to give.")


def p10(r: RunTimeline) -> float | None:
    return r.total_p10_s if r.total_p10_s is not None else r.total_s


def p90(r: RunTimeline) -> float | None:
    return r.total_p90_s if r.total_p90_s is not None else r.total_s


def makespan(lines: list[RunTimeline], devices: list[Device], per_device: int,
             seconds: Callable[[RunTimeline], float | None] | None = None) -> float | None:
    """The forecast's makespan of these runs (their total_s, or `seconds` of each)."""
    needs = [RunNeed(r.run, r.gpus, (seconds or (lambda x: x.total_s))(r), r.peak_memory_gib, r.warm_s) for r in lines]
    return forecast(devices, needs, per_device).makespan_s


SearchGives = Callable[[float, float], list[GiveOption]]  # (P90 time left for the search, runs' P90) → options


def judge(deadline: str, deadline_s: float, lines: list[RunTimeline], devices: list[Device], devices_source: str,
          per_device: int = 1, notes: list[str] | None = None, search: SearchLine | None = None,
          search_gives: SearchGives | None = None) -> DeadlinePlan:
    """The verdict on these runs (their times known or not) placed on `devices`, after the search if any."""
    schedule = forecast(devices, [RunNeed(r.run, r.gpus, r.total_s, r.peak_memory_gib, r.warm_s) for r in lines],
                        per_device)
    placed = {p.run: p for p in schedule.placements}
    for r in lines:
        if (p := placed.get(r.run)) is not None:
            r.devices, r.start_s, r.end_s = list(p.devices), p.start_s, p.end_s
    unknown = [f"{r.run}: {r.train_source if r.train_s is None else r.eval_source}" for r in lines
               if r.total_s is None]
    unknown += [f"{name}: needs more devices than the sweep may use" for name in schedule.unplaceable]
    if search is not None and search.seconds is None:
        unknown.append(f"learning-rate search: {search.source}")
    span = schedule.makespan_s if not unknown else None
    low = makespan(lines, devices, per_device, p10) if span is not None else None
    high = makespan(lines, devices, per_device, p90) if span is not None else None
    before = _search_times(search) if span is not None else (0.0, 0.0, 0.0)
    total = [None if x is None else round(x + b, 1) for x, b in zip((low, span, high), before)]
    out = DeadlinePlan(deadline=deadline, deadline_s=deadline_s, verdict=_verdict(total[1], total[2], deadline_s),
                       makespan_s=total[1], makespan_p10_s=total[0], makespan_p90_s=total[2],
                       slack_s=round(deadline_s - total[2], 1) if total[2] is not None else None,
                       longest_run_s=max((r.total_s for r in lines if r.total_s is not None), default=None),
                       devices=[d.id for d in devices], devices_source=devices_source, runs_per_device=per_device,
                       search=search, runs=lines, unknown=unknown, notes=list(notes or []))
    if out.verdict in (DeadlineVerdict.DOES_NOT_FIT, DeadlineVerdict.FITS_P50) and high is not None:
        out.gives = [g.model_copy(update={"makespan_s": None if g.makespan_s is None
                                          else round(g.makespan_s + before[2], 1)})
                     for g in what_gives(lines, devices, per_device, deadline_s - before[2])]
        if search_gives is not None and search is not None:
            out.gives += search_gives(deadline_s - high, high)
    return out


def _search_times(search: SearchLine | None) -> tuple[float, float, float]:
    """The search's (P10, P50, P90), s (0 without one); a bound not given is its P50."""
    if search is None or search.seconds is None:
        return 0.0, 0.0, 0.0
    mid = search.seconds
    return (search.p10_s if search.p10_s is not None else mid, mid, search.p90_s if search.p90_s is not None else mid)


def _verdict(span: float | None, high: float | None, deadline_s: float) -> DeadlineVerdict:
    if span is None or high is None:
        return DeadlineVerdict.UNKNOWN
    if high <= deadline_s:
        return DeadlineVerdict.FITS
    return DeadlineVerdict.FITS_P50 if span <= deadline_s else DeadlineVerdict.DOES_NOT_FIT


def what_gives(lines: list[RunTimeline], devices: list[Device], per_device: int, deadline_s: float
               ) -> list[GiveOption]:
    """Three ways to fit, each alone and the least change that brings the P90 makespan within the deadline: drop the
    longest runs, train a share of the epochs, evaluate a share of the samples."""
    lines = [_at_p90(r) for r in lines]
    gives = [g for g in (_drop_runs(lines, devices, per_device, deadline_s),
                         _fewer_epochs(lines, devices, per_device, deadline_s),
                         _fewer_samples(lines, devices, per_device, deadline_s)) if g is not None]
    return gives


def _at_p90(r: RunTimeline) -> RunTimeline:
    """The run with every part at its P90 (each scaled by the run's P90 ÷ P50)."""
    if r.total_s is None or r.total_p90_s is None or not r.total_s:
        return r
    k = r.total_p90_s / r.total_s
    return r.model_copy(update=dict(
        train_start_s=r.train_start_s * k, train_s=None if r.train_s is None else r.train_s * k,
        saves_s=r.saves_s * k, eval_start_s=r.eval_start_s * k, eval_s=None if r.eval_s is None else r.eval_s * k,
        total_s=r.total_p90_s))


def _drop_runs(lines: list[RunTimeline], devices: list[Device], per_device: int, deadline_s: float
               ) -> GiveOption | None:
    kept = list(lines)
    dropped: list[str] = []
    for r in sorted((r for r in lines if r.kind == "finetune"), key=lambda r: -(r.total_s or 0.0)):
        span = makespan(kept, devices, per_device)
        if span is not None and span <= deadline_s:
            break
        kept.remove(r)
        dropped.append(r.run)
    span = makespan(kept, devices, per_device)
    if not dropped or span is None or span > deadline_s:
        return None
    return GiveOption(what="runs", change=f"drop {len(dropped)} run(s), longest first: {', '.join(dropped)}",
                      makespan_s=round(span, 1))


def largest_share(span_at: Callable[[float], float | None], deadline_s: float) -> float | None:
    """The largest share in (0, 1] whose makespan fits (bisection); None when even a tiny share does not."""
    tiny = span_at(1e-3)
    if tiny is None or tiny > deadline_s:
        return None
    lo, hi = 1e-3, 1.0
    for _ in range(SEARCH_STEPS):
        mid = (lo + hi) / 2
        span = span_at(mid)
        lo, hi = (mid, hi) if span is not None and span <= deadline_s else (lo, mid)
    return lo


def _fewer_epochs(lines: list[RunTimeline], devices: list[Device], per_device: int, deadline_s: float
                  ) -> GiveOption | None:
    """Training past its start-up (train_start_s, apart) and its saves scale with the epochs."""
    def at(share: float) -> Callable[[RunTimeline], float | None]:
        def seconds(r: RunTimeline) -> float | None:
            if r.total_s is None or not r.train_s:
                return r.total_s
            return r.total_s - (r.train_s + r.saves_s) * (1 - share)
        return seconds

    share = largest_share(lambda s: makespan(lines, devices, per_device, at(s)), deadline_s)
    if share is None:
        return None
    return GiveOption(what="epochs", change=f"train {share:.0%} of each run's epochs (training.epochs × "
                      f"{share:.2f}, or max_steps)", makespan_s=makespan(lines, devices, per_device, at(share)))


def _fewer_samples(lines: list[RunTimeline], devices: list[Device], per_device: int, deadline_s: float
                   ) -> GiveOption | None:
    def at(share: float) -> Callable[[RunTimeline], float | None]:
        return lambda r: None if r.total_s is None else r.total_s - (r.eval_s or 0.0) * (1 - share)

    share = largest_share(lambda s: makespan(lines, devices, per_device, at(s)), deadline_s)
    if share is None:
        return None
    return GiveOption(what="eval_samples", change=f"evaluate {share:.0%} of each task's samples (eval.limit)",
                      makespan_s=makespan(lines, devices, per_device, at(share)))
