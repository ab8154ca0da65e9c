"""The report's "Predicted, then checked" section: each prediction the plan recorded beside its measurement, the ratio,
and every time outside its P10–P90 with its likely causes (report/predicted.py, report/overruns.py)."""

from __future__ import annotations

from tunelab.report.data import ReportData
from tunelab.report.document import Bullets, Para, Section, Table
from tunelab.report.overruns import with_causes
from tunelab.report.predicted import OVERRUN_MARGIN, Check, SweepChecks, submissions, sweep_checks

CAPTION = ("Predicted: run.yaml's `estimate` (written by scaffold from the plan). Measured: `summary.json` (training: "
           "start-up + duration + finish; peak), each `eval/*/*/scores.json` (duration, shared evenly among the "
           "target × tasks run at once), the ledger's `jobs` and the runs' `status.json` (makespan: first submission "
           "to the last training end or evaluation written).")


def _value(v: float | None, unit: str) -> str:
    if v is None:
        return "—"
    return f"{v:.2f} GiB" if unit == "GiB" else f"{v:.1f} s" if v < 120 else f"{v / 60:.1f} min"


def _verdict(c: Check) -> str:
    if c.ratio is None:
        return "not predicted" if c.predicted is None else "not measured"
    if not c.judged:
        return "shown only (not like with like)"
    if c.overran:
        return "**over its P90**" if c.span is not None else "**overran**"
    if c.underran:
        return "**under its P10**" if c.span is not None else "**ran under**"
    return "within P10–P90" if c.span is not None else "within margin"


def _predicted(c: Check) -> str:
    text = _value(c.predicted, c.unit)
    if c.span is not None:
        text += f" ({_value(c.span.p10_s, c.unit)}–{_value(c.span.p90_s, c.unit)})"
    return text


def _row(who: str, c: Check) -> list[str]:
    ratio = f"{c.ratio:.2f}×" if c.ratio is not None else "—"
    return [who, c.what, _predicted(c), _value(c.measured, c.unit), ratio, _verdict(c), c.source or "—"]


def _way(c: Check) -> str:
    return "over" if c.overran else "under"


def overrun_lines(sweep: SweepChecks) -> list[str]:
    """One line per figure outside its interval: the run or sweep, the figure, by how much, its likely causes."""
    out = []
    for r in sweep.runs:
        for c in r.checks:
            if c.outside and c.ratio is not None:
                out.append(f"**{r.run.name}** {c.what}: {c.ratio:.2f}× its prediction ({_way(c)}) — likely: "
                           + "; ".join(r.causes.get(c.what, [])))
    for c in sweep.totals:
        if c.outside and c.ratio is not None and c.what in sweep.causes:
            why = "; ".join(sweep.causes[c.what])
            out.append(f"**sweep** {c.what}: {c.ratio:.2f}× its prediction ({_way(c)}) — likely: {why}")
    return out


def checked_section(data: ReportData) -> Section | None:
    """None when no run carries a prediction (an experiment planned before predictions were recorded)."""
    if not any(r.config.estimate is not None for r in data.all):
        return None
    submitted = submissions(data)
    sweep = with_causes(data, sweep_checks(data, submitted), submitted)
    rows = [_row(r.run.name, c) for r in sweep.runs for c in r.checks]
    rows += [_row("sweep", c) for c in sweep.totals]
    blocks: list = [
        Para("What the plan predicted (P50, and its P10–P90 interval), against what was measured; a time outside "
             "its interval either way is flagged — a plan too slow sets time limits, the deadline verdict and node "
             f"packing as wrongly as one too fast (a figure without an interval: {OVERRUN_MARGIN:.0%} either way) — "
             "and its likely causes are read from what the runs recorded."),
        Table(["Run", "Figure", "Predicted (P10–P90)", "Measured", "Measured ÷ predicted", "Verdict",
               "Prediction's source"], rows, CAPTION)]
    lines = overrun_lines(sweep)
    blocks.append(Bullets(lines) if lines else Para(within_line(sweep)))
    unmeasured = [f"{who} {c.what}" for who, c in _predicted_times(sweep) if c.measured is None]
    if unmeasured:  # a time not measured is not "within" its prediction: said apart, overruns or not
        blocks.append(Para(f"Not measured yet (nothing ran to time): {', '.join(unmeasured)}."))
    return Section("Predicted, then checked", blocks)


def _predicted_times(sweep: SweepChecks) -> list[tuple[str, Check]]:
    checks = [(r.run.name, c) for r in sweep.runs for c in r.checks] + [("sweep", c) for c in sweep.totals]
    return [(who, c) for who, c in checks if c.unit == "s" and c.predicted is not None]


def within_line(sweep: SweepChecks) -> str:
    """No time outside its interval: how many of the predicted times were measured and judged."""
    times = _predicted_times(sweep)
    judged = [c for _, c in times if c.judged and c.ratio is not None]
    if not judged:
        return "Nothing measured yet to set against the plan's predicted times."
    return f"✓ Every measured time ({len(judged)} of {len(times)} predicted) fell within its predicted interval."
