"""Each predicted time of a plan corrected by its source's recorded errors here, with its interval; the raw figures stay
in run.yaml beside the corrected ones, for the next record."""

from __future__ import annotations

from collections.abc import Sequence

from tunelab.forecast.combine import summed
from tunelab.forecast.deadline import DeadlinePlan
from tunelab.forecast.evalrun import RunEvalPrediction
from tunelab.forecast.interval import corrected
from tunelab.forecast.runs import slurm_time_limit
from tunelab.ledger.predictions import PredictedPart, PredictionRecord
from tunelab.rundir.config import RunConfig
from tunelab.rundir.estimate import RunEstimate, TimeRange


def recorded_estimates(runs: Sequence[RunConfig], estimates: dict[str, RunEstimate],
                       evaluations: dict[str, RunEvalPrediction], forecast: DeadlinePlan | None
                       ) -> dict[str, RunEstimate]:
    """Every run's estimate (a control's made for it) with its evaluation and the sweep's makespan."""
    span, source = _makespan(forecast)
    return {cfg.name: evaluations[cfg.name].into(estimates.get(cfg.name) or RunEstimate(run=cfg.name)).model_copy(
        update={"makespan_s": span.p50_s if span else None, "makespan_range": span, "makespan_source": source})
        for cfg in runs}


def _makespan(forecast: DeadlinePlan | None) -> tuple[TimeRange | None, str]:
    if forecast is None:
        return None, "not predicted: the plan made no estimates"
    if forecast.makespan_s is None or forecast.makespan_p10_s is None or forecast.makespan_p90_s is None:
        return None, "not predicted: " + "; ".join(forecast.unknown)
    span = TimeRange(p10_s=forecast.makespan_p10_s, p50_s=forecast.makespan_s, p90_s=forecast.makespan_p90_s,
                     basis="every run's parts at their P10 / P90, placed as the median is")
    return span, f"the sweep's forecast on {forecast.devices_source}"


TRAINING_PARTS = frozenset({PredictedPart.TRAIN_START, PredictedPart.TRAIN})  # what a training job's records hold


def ranged_training(est: RunEstimate, records: Sequence[PredictionRecord], device: str) -> RunEstimate:
    """A run's estimate (a copy), start-up and rest corrected by their source's errors, with their sum's interval."""
    if est.seconds is None or not est.time_kind:
        return est
    raw_start = est.startup_raw_s or 0.0
    notes = []
    start, start_range = raw_start, None
    if est.startup_kind and raw_start:
        start, start_range, note = corrected(raw_start, records, device, PredictedPart.TRAIN_START, est.startup_kind)
        notes.append(note)
    rest = max(0.0, (est.seconds_raw if est.seconds_raw is not None else est.seconds) - raw_start)
    rest_p50, rest_range, note = corrected(rest, records, device, PredictedPart.TRAIN, est.time_kind, est.time_spread)
    notes.append(note)
    seconds = round(start + rest_p50, 1)
    both = summed([rest_range, start_range], records, device, TRAINING_PARTS, "the training job") or rest_range
    basis = rest_range.basis + (f"; start-up: {start_range.basis}; {both.basis}" if start_range is not None else "")
    source = est.time_source + "".join(f"; {n}" for n in notes if n)
    return est.model_copy(update=dict(
        seconds=seconds, startup_s=round(start, 1) if est.startup_s is not None else None, time_source=source,
        time_range=both.model_copy(update={"p50_s": seconds, "basis": basis}),
        slurm_time_limit=slurm_time_limit(seconds),
        gpu_hours=round(seconds * est.processes / 3600, 4) if est.gpu_hours is not None else None))


def contention_warnings(estimates: dict[str, RunEstimate]) -> list[str]:
    """One line for a plan whose times rest on measurements timed under contention, and what was done."""
    hit = [e.run for e in estimates.values() if "under contention" in e.time_source]
    if not hit:
        return []
    return [f"{len(hit)} run(s) priced from measurements timed under contention ({', '.join(hit[:4])}"
            + ("…" if len(hit) > 4 else "") + "): their speed was corrected by the share of the cores the "
            "measurement had (see each run's time source, which gives the factor); `tunelab probe` on a quiet "
            "machine measures it cleanly"]
