"""How far a predicted time can be trusted: an interval from the errors (log measured / predicted) its source's earlier
predictions made on this device, recorded before correction so corrections never compound.

- The centre: the median recorded error corrects the prediction in full (`correction`).
- With MIN_RECORDS errors: P10 and P90 are split-conformal quantiles, valid however the errors are distributed as long
  as the new run is like the recorded ones; the measurements' spread is not added (the errors hold it).
- Before: the kind's assumed log-normal width (PRIOR_SIGMA) widened in quadrature by the measurements' spread. Errors
  measured under contention are kept apart: they are the load's, not the source's."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import median

from tunelab.ledger.predictions import PredictedPart, PredictionRecord
from tunelab.rundir.estimate import SourceKind, TimeRange

Z90 = 1.2816  # the standard normal's 90th percentile
MIN_SIGMA = 0.05  # no interval narrower than ±6 %: a shared machine's timings move that much between runs
# The width of each kind before enough errors are recorded (log-space σ: 0.15 ≈ P10–P90 of ×0.82–×1.21). Assumed,
# stated wherever used; the benchmarks print the share of measured times their intervals cover, and their width.
# TIMED: first contact priced part by part (forecast/runs.py) lands as close as a probe's real steps
# (benchmarks/first_contact.py), so it takes their width.
PRIOR_SIGMA = {
    SourceKind.MEASURED: 0.15,
    SourceKind.CARRIED: 0.35,
    SourceKind.PROBED: 0.30,
    SourceKind.TIMED: 0.30,
    SourceKind.MODEL: 0.80,
    SourceKind.ASSUMED: 1.00,
}


def conformal_ranks(n: int) -> tuple[int, int] | None:
    """The 1-based ranks of the split-conformal P10 and P90 among n sorted errors, ⌊0.1 (n+1)⌋ and ⌈0.9 (n+1)⌉; None
    while either is not finite (n < 9)."""
    low, high = (n + 1) // 10, -(-9 * (n + 1) // 10)  # integer arithmetic: no 0.9 · 10 = 8.999…
    return (low, high) if low >= 1 and high <= n else None


MIN_RECORDS = next(n for n in range(1, 100) if conformal_ranks(n) is not None)  # 9: the fewest with finite bounds


def conformal_bounds(errors: Sequence[float]) -> tuple[float, float] | None:
    """The split-conformal P10 and P90 of these (log) errors; None below MIN_RECORDS of them."""
    ranks = conformal_ranks(len(errors))
    if ranks is None:
        return None
    ranked = sorted(errors)
    return ranked[ranks[0] - 1], ranked[ranks[1] - 1]


def floored(low: float, high: float) -> tuple[float, float]:
    """Log bounds around the centre, each at least MIN_SIGMA's P10/P90 away from it."""
    return min(low, -Z90 * MIN_SIGMA), max(high, Z90 * MIN_SIGMA)


# each part as a correction names it (several parts of one run are corrected, each by its own records)
PART_WORDS = {PredictedPart.TRAIN_START: "start-up", PredictedPart.TRAIN: "training", PredictedPart.EVAL: "evaluation"}


@dataclass(frozen=True)
class Correction:
    """A source's recorded errors on a device for one part: the factor applied (their median, in full), how many,
    and their conformal P10 and P90 as log offsets from that median (None below MIN_RECORDS)."""

    factor: float  # measured / predicted, the median of the records: applied to the prediction
    n: int
    bounds: tuple[float, float] | None = None
    contended_left_out: int = 0

    def text(self, kind: SourceKind | str, part: PredictedPart | None = None) -> str:
        pct = (self.factor - 1) * 100
        way = "slow" if pct >= 0 else "fast"
        what = f" ({PART_WORDS[part]})" if part is not None else ""
        out = (f"history says {kind} predictions of this{what} ran {abs(pct):.0f} % {way} here over {self.n} run(s): "
               f"×{self.factor:.2f} applied, " + ("its P10–P90 their quantiles" if self.bounds is not None else
                                                   f"its width still assumed (under {MIN_RECORDS} runs)"))
        if self.contended_left_out:
            out += f" ({self.contended_left_out} measured under contention left out)"
        return out


def same_device(recorded: str, planned: str) -> bool:
    """A recorded device (torch's name, or cpu) is the planned one (a catalog GPU's name, or cpu)."""
    rec, plan = recorded.lower().replace(" ", ""), planned.lower()
    if plan == "cpu" or rec == "cpu":
        return rec == plan
    return plan.split("-")[0] in rec


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
    bounds = conformal_bounds(logs)
    return Correction(factor=math.exp(mid), n=len(clean),
                      bounds=None if bounds is None else (bounds[0] - mid, bounds[1] - mid),
                      contended_left_out=len(mine) - len(clean))


def time_range(p50: float, kind: SourceKind | str, spread: float = 0.0, fix: Correction | None = None,
               what: str = "") -> TimeRange:
    """The interval around a corrected `p50`: conformal bounds where records suffice, else the kind's widened σ."""
    kind = SourceKind(kind) if str(kind) in SourceKind.__members__.values() else SourceKind.ASSUMED
    if fix is not None and fix.bounds is not None:
        low, high = floored(*fix.bounds)
        basis = (f"{fix.n} recorded errors of {kind} predictions here: P10–P90 their conformal quantiles "
                 f"(×{math.exp(low):.2f}–×{math.exp(high):.2f} of the corrected time)")
    else:
        sigma = max(MIN_SIGMA, math.hypot(PRIOR_SIGMA[kind], spread))
        low, high = -Z90 * sigma, Z90 * sigma
        basis = f"{kind}: width σ {PRIOR_SIGMA[kind]:.2f} assumed " + (
            f"({fix.n} recorded error(s) here, fewer than the {MIN_RECORDS} a conformal P10–P90 needs)"
            if fix is not None else f"until {MIN_RECORDS} of its predictions are checked here")
        if spread:
            basis += f"; measurements' spread σ {spread:.2f}"
    if what:
        basis = f"{what}: {basis}"
    return TimeRange(p10_s=round(p50 * math.exp(low), 1), p50_s=round(p50, 1), p90_s=round(p50 * math.exp(high), 1),
                     basis=basis)


def corrected(seconds: float, records: Sequence[PredictionRecord], device: str, part: PredictedPart,
              kind: SourceKind | str, spread: float = 0.0) -> tuple[float, TimeRange, str]:
    """(corrected seconds, interval, what the correction says — '' without records) of one part."""
    fix = correction(records, device, part, kind)
    p50 = seconds * fix.factor if fix is not None else seconds
    return p50, time_range(p50, kind, spread, fix), fix.text(kind, part) if fix is not None else ""


def ranged_eval(seconds: float, source: str, records: Sequence[PredictionRecord], device: str
                ) -> tuple[float, TimeRange, str]:
    """An evaluation's seconds corrected by its source's recorded errors here, with its interval and words."""
    return corrected(seconds, records, device, PredictedPart.EVAL, SourceKind.of_eval_source(source))
