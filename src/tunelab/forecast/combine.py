"""A time made of parts (start-up and the rest, training and evaluation) as one interval, combined as the records say
such parts err together.

With MIN_RECORDS past runs here that recorded every part (`whole_errors`), P10/P90 are the conformal quantiles of those
runs' own errors. Otherwise the parts are taken as independent (`independent`): each side's distance from the centre
added in quadrature — never wider than every part at its P10 (or P90) at once, and P10 stays above 0."""

from __future__ import annotations

import math
from collections.abc import Sequence

from tunelab.forecast.interval import MIN_RECORDS, conformal_bounds, correction, floored, same_device
from tunelab.ledger.predictions import PredictedPart, PredictionRecord
from tunelab.rundir.estimate import TimeRange


def independent(parts: Sequence[TimeRange | None], basis: str = "") -> TimeRange | None:
    """The sum of parts whose errors are independent (None: no part known); one part is itself."""
    known = [p for p in parts if p is not None]
    if len(known) <= 1:
        return known[0] if known else None
    centre = sum(p.p50_s for p in known)
    below = math.sqrt(sum((p.p50_s - p.p10_s) ** 2 for p in known))
    above = math.sqrt(sum((p.p90_s - p.p50_s) ** 2 for p in known))
    return TimeRange(p10_s=round(centre - below, 1), p50_s=round(centre, 1), p90_s=round(centre + above, 1),
                     basis=basis or "the parts' errors taken as independent (each side added in quadrature)")


def whole_errors(records: Sequence[PredictionRecord], device: str, parts: frozenset[PredictedPart]) -> list[float]:
    """log(measured / predicted) of each past run's `parts` summed on `device`, each predicted part corrected as a plan
    corrects it today; only runs with every part recorded and none measured under contention."""
    by_run: dict[str, list[PredictionRecord]] = {}
    for r in records:
        if r.part in parts and same_device(r.device, device) and r.predicted_s > 0 and r.measured_s > 0:
            by_run.setdefault(r.key.rsplit("#", 1)[0], []).append(r)
    factors: dict[tuple[PredictedPart, str], float] = {}

    def factor(r: PredictionRecord) -> float:
        if (r.part, r.source) not in factors:
            fix = correction(records, device, r.part, r.source)
            factors[r.part, r.source] = fix.factor if fix is not None else 1.0
        return factors[r.part, r.source]

    out = []
    for rows in by_run.values():
        if len(rows) != len(parts) or {r.part for r in rows} != parts or any(r.contended for r in rows):
            continue
        out.append(math.log(sum(r.measured_s for r in rows) / sum(r.predicted_s * factor(r) for r in rows)))
    return out


def summed(parts: Sequence[TimeRange | None], records: Sequence[PredictionRecord], device: str,
           recorded: frozenset[PredictedPart], what: str) -> TimeRange | None:
    """The sum of `parts`, which a run's records hold as `recorded`: from the recorded errors of such sums on
    `device` where there are MIN_RECORDS of them, else the parts taken as independent. `what` names the sum."""
    known = [p for p in parts if p is not None]
    if len(known) <= 1:
        return known[0] if known else None
    errors = whole_errors(records, device, recorded)
    bounds = conformal_bounds(errors)
    if bounds is None:
        have = f"{len(errors)} recorded" if errors else "none recorded"
        return independent(known, f"{what}: its parts' errors taken as independent, each side added in quadrature "
                                  f"({have} of such sums here; {MIN_RECORDS} give their own P10–P90)")
    low, high = floored(*bounds)
    centre = sum(p.p50_s for p in known)
    return TimeRange(p10_s=round(centre * math.exp(low), 1), p50_s=round(centre, 1),
                     p90_s=round(centre * math.exp(high), 1),
                     basis=f"{what}: P10–P90 the conformal quantiles of {len(errors)} recorded errors of such sums "
                           "here")
