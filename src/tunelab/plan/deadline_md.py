"""plan.md's deadline section: the verdict, the makespan against the deadline, each run's parts with their
sources, what would have to give, and the per-run lever table (choice, effect, source)."""

from __future__ import annotations

from tunelab.fsutil import human_seconds
from tunelab.plan.deadline import DeadlinePlan, DeadlineVerdict, RunTimeline
from tunelab.rundir.estimate import LeverChoice

VERDICT_WORDS = {
    DeadlineVerdict.FITS: "fits at P90",
    DeadlineVerdict.FITS_P50: "fits at P50, not at P90",
    DeadlineVerdict.DOES_NOT_FIT: "does not fit",
    DeadlineVerdict.UNKNOWN: "cannot be told",
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") or "—"


def _t(seconds: float | None) -> str:
    return human_seconds(seconds) if seconds is not None else "?"


def verdict_line(d: DeadlinePlan) -> str:
    """One line: the verdict, the makespan against the deadline, the slack."""
    head = f"**Deadline {d.deadline}: {VERDICT_WORDS[d.verdict]}**"
    if d.makespan_s is None:
        return f"{head} — the makespan is not predicted ({len(d.unknown)} run(s) without a time)"
    slack = d.slack_s or 0.0
    spare = f"{_t(slack)} to spare at P90" if slack >= 0 else f"{_t(-slack)} over at P90"
    return (f"{head} — predicted makespan {_t(d.makespan_s)} (P10–P90 {_t(d.makespan_p10_s)}–"
            f"{_t(d.makespan_p90_s)}) of {_t(d.deadline_s)} ({spare})")


def _run_row(r: RunTimeline) -> str:
    where = ",".join(r.devices) or "—"
    start = f" ({_t(r.start_s)})" if r.start_s is not None else ""
    train = _t((r.train_s or 0.0) + r.train_start_s if r.train_s is not None else None)
    span = f" ({_t(r.total_p10_s)}–{_t(r.total_p90_s)})" if r.total_p10_s is not None else ""
    return (f"| {r.run} | {train if r.kind == 'finetune' else '—'} | {_t(r.saves_s) if r.saves_s else '—'} "
            f"| {_t(r.eval_start_s)} | {_t(r.eval_s)} ({r.eval_targets} target(s)) | {_t(r.total_s)}{span} "
            f"| {where}{start} |")


def _sources(d: DeadlinePlan) -> list[str]:
    lines = ["", "Sources:", ""]
    for r in d.runs:
        parts = [f"training: {r.train_source}"] if r.kind == "finetune" else []
        if r.train_start_source:
            parts.append(f"training start: {r.train_start_source}")
        if r.saves_source:
            parts.append(f"saves: {r.saves_source}")
        parts += [f"evaluation start: {r.eval_start_source}", f"evaluation: {r.eval_source}"]
        lines.append(f"- {r.run}: " + "; ".join(parts))
    return lines


def _search_lines(d: DeadlinePlan) -> list[str]:
    """The learning-rate search, first on the timeline (its time is in the makespan)."""
    s = d.search
    if s is None:
        return []
    span = f" (P10–P90 {_t(s.p10_s)}–{_t(s.p90_s)})" if s.p10_s is not None else ""
    done = f"; already searched, not counted: {', '.join(s.searched)}" if s.searched else ""
    return ["", f"Before the runs, the learning-rate search (`tunelab tune`): {_t(s.seconds)}{span} — {s.source}"
            f"{done}. The makespan above includes it."]


def deadline_lines(d: DeadlinePlan | None, levers: dict[str, list[LeverChoice]]) -> list[str]:
    """The section (nothing without a deadline)."""
    if d is None:
        return []
    lines = ["## Deadline", "", verdict_line(d), "",
             f"Placed longest first on {d.devices_source}, up to {d.runs_per_device} run(s) per device; each run "
             "is its training, its saves, its evaluation job's start and its evaluation.", "",
             "| Run | Training | Saves | Eval start | Evaluation | Total (P10–P90) | Where (start) |",
             "|---|---|---|---|---|---|---|"]
    lines += [_run_row(r) for r in d.runs]
    lines += _search_lines(d)
    lines += _sources(d)
    if d.verdict in (DeadlineVerdict.FITS_P50, DeadlineVerdict.DOES_NOT_FIT, DeadlineVerdict.UNKNOWN) \
            and any("timed here" in r.train_source or "assumed" in r.train_source for r in d.runs):
        lines += ["", "`tunelab probe EXPERIMENT.yaml` measures the runs' real steps on this machine and narrows the "
                  "interval (a timed or assumed speed is wide)."]
    if d.gives:
        lines += ["", f"What would have to give for the P90 to fit (each alone; longest run {_t(d.longest_run_s)} "
                  "is the floor):", ""]
        lines += [f"- {g.what}: {g.change} → makespan {_t(g.makespan_s)}" for g in d.gives]
    elif d.verdict == DeadlineVerdict.DOES_NOT_FIT:
        lines += ["", f"Nothing short of fewer runs fits: the longest run alone takes {_t(d.longest_run_s)}."]
    if d.unknown:
        lines += ["", "Not predicted:", ""] + [f"- {u}" for u in d.unknown]
    lines += ["", "Left out: " + "; ".join(d.notes) + "."] if d.notes else []
    return lines + [""] + lever_lines(levers)


def lever_lines(levers: dict[str, list[LeverChoice]]) -> list[str]:
    """The lever table: each run's choices, their predicted effect and source; shown-only ones marked."""
    if not levers:
        return []
    lines = ["### Levers", "", "training.levers: auto — settings that keep the results; a field set in the spec "
             "wins. *Shown* marks a choice not written into run.yaml.", "",
             "| Run | Lever | Choice | Effect (time; memory) | Source | Why |", "|---|---|---|---|---|---|"]
    for run, choices in levers.items():
        for c in choices:
            value = c.value if c.applied else f"{c.value} *(shown)*"
            lines.append(f"| {run} | {c.lever} | {_cell(value)} | {_cell(c.effect)} | {c.source.value} "
                         f"| {_cell(c.why)} |")
    return lines + [""]
