"""How far a predicted time can be trusted: an interval around it, from the kind of its source, the spread of
the measurements it came from, and the errors that source's earlier predictions made on this device.

A time's error is taken as log-normal: measured / predicted = exp(N(μ, σ²)).
- μ is the source's recorded bias here (`correction`): the median log error of its past predictions of that
  part on that device, shrunk toward none while they are few (n / (n + SHRINK) of it). Predictions are
  recorded before correction (ledger/predictions.py), so corrections never compound.
- σ is, once MIN_RECORDS errors are recorded, their own spread; before that the source kind's width
  (PRIOR_SIGMA: stated assumptions, checked by the benchmarks' coverage line); in both cases widened by the
  spread of the measurements the speed came from.
P10 and P90 are exp(μ ∓ 1.28 σ) around the prediction. Errors of measurements taken under contention are kept
apart: they are the load's, not the source's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import median

from tunelab.ledger.predictions import PredictedPart, PredictionRecord
from tunelab.rundir.estimate import SourceKind, TimeRange

Z90 = 1.2816  # the standard normal's 90th percentile
MIN_RECORDS = 3  # recorded errors before their spread replaces the kind's assumed width
SHRINK = 2  # a correction counts n / (n + SHRINK) of the recorded bias: one odd run does not swing a plan
MIN_SIGMA = 0.05  # no interval narrower than ±6 %: a shared machine's timings move that much between runs
# The width of each kind before any error is recorded (log-space σ: 0.15 ≈ P10–P90 of ×0.82–×1.21). Assumed,
# stated wherever used; the benchmarks print the share of measured times their intervals cover.
PRIOR_SIGMA = {
    SourceKind.MEASURED: 0.15,
    SourceKind.CARRIED: 0.35,
    SourceKind.PROBED: 0.30,
    SourceKind.TIMED: 0.60,
    SourceKind.MODEL: 0.80,
    SourceKind.ASSUMED: 1.00,
}


# each part as a correction names it (several parts of one run are corrected, each by its own records)
PART_WORDS = {PredictedPart.TRAIN_START: "start-up", PredictedPart.TRAIN: "training", PredictedPart.EVAL: "evaluation"}


@dataclass(frozen=True)
class Correction:
    """A source's recorded errors on a device for one part: the factor applied, the width they show, how many."""

    factor: float  # applied to the prediction (shrunk toward 1 while n is small)
    sigma: float | None  # their spread (log-space); None below MIN_RECORDS
    n: int
    median_ratio: float  # measured / predicted, the median of the records
    contended_left_out: int = 0

    def text(self, kind: SourceKind | str, part: PredictedPart | None = None) -> str:
        pct = (self.median_ratio - 1) * 100
        way = "slow" if pct >= 0 else "fast"
        what = f" ({PART_WORDS[part]})" if part is not None else ""
        out = (f"history says {kind} predictions of this{what} ran {abs(pct):.0f} % {way} here over {self.n} run(s): "
               f"×{self.factor:.2f} applied")
        if self.contended_left_out:
            out += f" ({self.contended_left_out} measured under contention left out)"
        return out


def same_device(recorded: str, planned: str) -> bool:
    """A recorded device (torch's name, or cpu) is the planned one (a catalog GPU's name, or cpu)."""
    rec, plan = recorded.lower().replace(" ", ""), planned.lower()
    if plan == "cpu" or rec == "cpu":
        return rec == plan
    return plan.split("-")[0] in rec


def log_spread(values: Sequence[float]) -> float:
    """The standard deviation of the logs of positive values (0 for fewer than two)."""
    logs = [math.log(v) for v in values if v and v > 0]
    if len(logs) < 2:
        return 0.0
    mean = sum(logs) / len(logs)
    return math.sqrt(sum((x - mean) ** 2 for x in logs) / (len(logs) - 1))


def correction(records: Sequence[PredictionRecord], device: str, part: PredictedPart,
               kind: SourceKind | str) -> Correction | None:
    """The recorded errors of `kind` predictions of `part` on `device` (uncontended measurements only)."""
    mine = [r for r in records if r.part == part and r.source == str(kind) and same_device(r.device, device)
            and r.predicted_s > 0 and r.measured_s > 0]
    clean = [r for r in mine if not r.contended]
    if not clean:
        return None
    logs = [math.log(r.ratio) for r in clean]
    mid = median(logs)
    n = len(clean)
    sigma = max(MIN_SIGMA, log_spread([r.ratio for r in clean])) if n >= MIN_RECORDS else None
    return Correction(factor=math.exp(mid * n / (n + SHRINK)), sigma=sigma, n=n, median_ratio=math.exp(mid),
                      contended_left_out=len(mine) - n)


def time_range(p50: float, kind: SourceKind | str, spread: float = 0.0, fix: Correction | None = None,
               what: str = "") -> TimeRange:
    """The interval around an (already corrected) prediction `p50`."""
    kind = SourceKind(kind) if str(kind) in SourceKind.__members__.values() else SourceKind.ASSUMED
    base = fix.sigma if fix is not None and fix.sigma is not None else PRIOR_SIGMA[kind]
    sigma = max(MIN_SIGMA, math.hypot(base, spread))
    if fix is not None and fix.sigma is not None:
        basis = f"{fix.n} recorded errors of {kind} predictions here (σ {fix.sigma:.2f})"
    else:
        basis = f"{kind}: width σ {PRIOR_SIGMA[kind]:.2f} assumed until {MIN_RECORDS} of its predictions are checked"
    if spread:
        basis += f"; measurements' spread σ {spread:.2f}"
    if what:
        basis = f"{what}: {basis}"
    return TimeRange(p10_s=round(p50 * math.exp(-Z90 * sigma), 1), p50_s=round(p50, 1),
                     p90_s=round(p50 * math.exp(Z90 * sigma), 1), basis=basis)


def corrected(seconds: float, records: Sequence[PredictionRecord], device: str, part: PredictedPart,
              kind: SourceKind | str, spread: float = 0.0) -> tuple[float, TimeRange, str]:
    """(corrected seconds, interval, what the correction says — '' without records) of one part."""
    fix = correction(records, device, part, kind)
    p50 = seconds * fix.factor if fix is not None else seconds
    return p50, time_range(p50, kind, spread, fix), fix.text(kind, part) if fix is not None else ""


def ranged_eval(seconds: float, source: str, records: Sequence[PredictionRecord], device: str
                ) -> tuple[float, TimeRange, str]:
    """An evaluation's seconds (estimate/evalrun.py), corrected by its source's recorded errors here, its interval
    and the correction's words."""
    return corrected(seconds, records, device, PredictedPart.EVAL, SourceKind.of_eval_source(source))
