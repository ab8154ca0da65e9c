"""plan.md's time sections: the deadline's verdict, the makespan against the deadline, each run's parts with their
sources, what would have to give, the per-run lever table (choice, effect, source), and the learning-rate search
priced (forecast/tunecost.py)."""

from __future__ import annotations

from tunelab.forecast.deadline import DeadlinePlan, DeadlineVerdict, RunTimeline
from tunelab.forecast.tunecost import SearchCost
from tunelab.fsutil import human_seconds
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


def search_lines(costs: list[SearchCost]) -> list[str]:
    """plan.md's section: a row per combination and the total."""
    if not costs:
        return []
    lines = ["## Learning-rate search", "",
             "Each combination's runs train at the rate its search finds (`tunelab tune`); priced as the pruner will "
             "spend it: each trial's start-up (on the local executor, after a combination's first trial, without the "
             "training stack's import: its trials start warm), and the share of its budget successive halving is "
             "expected to let it train.", "",
             "| Combination | From run | Trials | Budget | Steps per trial | Share trained | Time (P10–P90) "
             "| Every trial to its budget |", "|---|---|---|---|---|---|---|---|"]
    for c in costs:
        time = c.time_range.text() if c.time_range else (human_seconds(c.seconds) if c.seconds is not None else "—")
        full = human_seconds(c.unpruned_s) if c.unpruned_s is not None else "—"
        lines.append(f"| {c.combination} | {c.run} | {c.trials} | {c.budget:g} | {c.steps_per_trial} "
                     f"| {c.spent_share:.0%} | {time} | {full} |")
    evaluated = [c for c in costs if c.evaluated]
    if evaluated:
        lines += ["", "An eval task's metric judges the trials: each trial that trains its whole budget is then "
                  "evaluated by a job of its own, in the time above (" + "; ".join(
                      f"{c.combination}: {c.evaluated:.2f} of {c.trials} expected, "
                      + (f"{human_seconds(c.eval_s)} each" if c.eval_s is not None else "not priced")
                      for c in evaluated) + ")."]
    return lines + ["", f"**Search total:** {search_summary(costs)}", ""]


def search_summary(costs: list[SearchCost]) -> str:
    """The whole search in words: its combinations, trials and total time (one trial at a time, before the sweep)."""
    trials = sum(c.trials for c in costs)
    known = [c.seconds for c in costs if c.seconds is not None]
    total = human_seconds(sum(known)) if len(known) == len(costs) else "not predicted (a run has no predicted time)"
    return (f"{len(costs)} combination(s), {trials} trials: {total} as successive halving is expected to spend it, "
            "one trial at a time, before the sweep")
