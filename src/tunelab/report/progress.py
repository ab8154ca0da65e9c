"""How far the sweep got, as the report says it: the status line, the "evaluated" counts and the Issues ✓ each count
only what the run directories show done (report/coverage.py)."""

from __future__ import annotations

from collections import Counter

from tunelab.report.data import ReportData, RunData
from tunelab.report.findings import retries
from tunelab.rundir.layout import FAILED, INTERRUPTED, PENDING, RUNNING


def status_line(data: ReportData) -> str:
    runs, done = data.runs, data.completed
    counts = Counter(r.state for r in runs)
    text = f"{len(done)} of {len(runs)} fine-tuned runs completed"
    bad = [r.name for r in runs if r.state in (FAILED, INTERRUPTED)]
    if bad:
        text += f", {len(bad)} failed or interrupted ({', '.join(bad)})"
    for state in (RUNNING, PENDING):
        if counts.get(state):
            text += f", {counts[state]} {state}"
    retried = [r.name for r in runs if retries(r)]
    if retried:
        text += f", {len(retried)} retried ({', '.join(retried)})"
    text += "; " + evaluated_text(done, "completed runs")
    absent: dict[str, list[str]] = {}
    for a in data.absent:
        absent.setdefault(a.kind, []).append(a.name)
    text += "; " + evaluated_text(data.controls, "controls", absent.get("control", []))
    if data.eval_only or absent.get("eval_only"):
        text += "; " + evaluated_text(data.eval_only, "eval-only", absent.get("eval_only", []))
    if absent.get("finetune"):
        text += f"; {len(absent['finetune'])} designed run(s) with no directory ({', '.join(absent['finetune'])})"
    return ("⚠ partial — " if data.partial else "✓ ") + text


def evaluated_text(runs: list[RunData], what: str, absent: list[str] | None = None) -> str:
    """'2 of 3 controls evaluated (1 only partly: X; 1 designed with no directory: Y)': evaluated = every planned
    checkpoint × task on every sample (report/coverage.py)."""
    full = [r for r in runs if r.fully_evaluated]
    partly = [r.name for r in runs if r.partly_evaluated]
    notes = ([f"{len(partly)} only partly: {', '.join(partly)}"] if partly else []) + (
        [f"{len(absent)} designed with no directory: {', '.join(absent)}"] if absent else [])
    return f"{len(full)} of {len(runs) + len(absent or [])} {what} evaluated" + (f" ({'; '.join(notes)})"
                                                                                   if notes else "")


def evaluated_cell(runs: list[RunData]) -> str:
    partly = sum(1 for r in runs if r.partly_evaluated)
    return str(sum(1 for r in runs if r.fully_evaluated)) + (f" (+{partly} partly)" if partly else "")


def no_issues_line(data: ReportData) -> str:
    """The Issues section's ✓, saying what it covers: runs that have not started have nothing to check yet."""
    waiting = [r.name for r in data.runs if r.state in (PENDING, RUNNING)]
    line = "✓ No failed, retried or cancelled runs; no NaN losses, empty files or silent runs"
    if not waiting:
        return line + "."
    return (f"{line} among the {len(data.runs) - len(waiting)} of {len(data.runs)} fine-tuned runs that ended; "
            f"not ended yet (pending or running), so not checked: {', '.join(waiting)}.")
