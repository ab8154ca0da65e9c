"""The report's Evaluation section: one table per task, the headline task's per-epoch table and the score figures;
fractions as percentages (differences in points), other metrics as numbers."""

from __future__ import annotations

from typing import Any

# one way to show a metric (kinds.py, light for `tunelab results`) and a difference; sections and replicates
# import them from here
from tunelab.evaluate.kinds import is_fraction, show, show_ci  # noqa: F401
from tunelab.ledger.results import EvalRecord
from tunelab.report.data import ReportData, RunData, TaskInfo
from tunelab.report.differences import delta_cell, diff_text, show_delta
from tunelab.report.document import Para, Section, Table
from tunelab.report.evidence import evidence_note
from tunelab.report.figures import FigureFile
from tunelab.report.findings import Findings
from tunelab.rundir.layout import parse_epoch_name
from tunelab.stats.paired import Difference, paired_difference


def _rows_of(run: RunData, task: TaskInfo, metrics: list[str], control: RunData | None) -> list[list[str]]:
    not_evaluated = EvalRecord(label="—", task=task.name)
    base = control.value(task.name) if control else None
    rows = []
    for e in run.task_evals(task.name) or [not_evaluated]:
        delta, d = None if e.score is None or base is None else e.score - base, None
        if delta is not None and control is not None and task.primary_metric:
            d = paired_difference([run.sample_scores(task.name, e.label)], [control.sample_scores(task.name)],
                                  task.primary_metric)
        cells = [show_ci(e.metrics.get(m), e.bounds(m), m) for m in metrics]
        rows.append([run.name, run.kind, run.checkpoint_name(e.epoch, e.label), *cells,
                     delta_cell(d, delta, task.primary_metric) if run.kind == "fine-tuned" else "—",
                     _samples_cell(run, e)])
    if run.evals:  # a planned checkpoint this task never ran on: a row that says so, not a silent gap
        rows += [[run.name, run.kind, run.checkpoint_name(parse_epoch_name(g.label), g.label), "✗ not evaluated",
                  *["—"] * (len(metrics) - 1 + 2)] for g in run.eval_gaps if g.task == task.name and g.samples is None]
    return rows


def _samples_cell(run: RunData, e: EvalRecord) -> str:
    """The samples evaluated; '✗ 20 of 40' where the task's split holds more (an evaluation cut short)."""
    if e.samples is None:
        return "—"
    planned = run.planned_samples(e.task, e.label)
    return f"✗ {e.samples} of {planned}" if planned is not None and e.samples < planned else str(e.samples)


def task_table(data: ReportData, task: TaskInfo) -> Table:
    """Every run, control and eval-only checkpoint on one task, all its metrics."""
    metrics = task.shown_metrics()
    rows = []
    for r in data.runs:
        rows += _rows_of(r, task, metrics, data.control_for(r))
    for c in data.references:
        rows += _rows_of(c, task, metrics, None)
    where = f"{task.source}" + (f" on {task.dataset} / {task.split}" if task.dataset else "")
    better = "higher" if task.greater_is_better else "lower"
    header = ["Run", "Type", "Checkpoint", *[m + (" ★" if m == task.primary_metric else "") for m in metrics],
              "Δ★ vs control", "Samples"]
    return Table(header, rows, f"Task **{task.name}** ({where}); ★ primary metric ({better} is better); from "
                 f"`eval/<checkpoint>/{task.name}/scores.json` (inspect-ai `.eval` logs beside them). [brackets]: 95 % "
                 "interval from the per-sample scores (Wilson for proportions, seeded bootstrap otherwise); Δ = "
                 "fine-tuned minus the same model's base-model control, paired on the same test samples "
                 "(bootstrap interval; n.s. = the interval includes zero); ✗ samples: fewer than the task's split holds "
                 "(`data/provenance.json`, capped by `limit`).")


def epoch_table(data: ReportData) -> Table | None:
    head = data.headline
    if head is None:
        return None
    epochs = sorted({e.epoch for r in data.runs for e in r.task_evals(head.name) if e.epoch is not None})
    if len(epochs) < 2:
        return None
    rows = []
    shared = {e: data.shared_stage(e) for e in epochs}  # a staged sweep's stage labels, in the header when shared
    for r in data.runs:
        by = {e.epoch: e for e in r.task_evals(head.name) if e.epoch is not None}
        cells = []
        for e in epochs:
            cell = show_ci(by[e].score, by[e].bounds(head.primary_metric), head.primary_metric) \
                if e in by else "—"
            own = r.epoch_stage.get(e) if e in by and not shared[e] else None  # stages differ: each run's own
            cells.append(f"{cell} ({own})" if own else cell)
        rows.append([r.name, *cells])
    return Table(["Run", *[f"epoch_{e}" + (f" ({shared[e]})" if shared[e] else "") for e in epochs]], rows,
                 f"{head.name} ({head.primary_metric}) per evaluated epoch, [95 % interval]"
                 + ("; a staged run's checkpoints also read STAGE/epoch_K (`stages.json`)."
                    if any(r.epoch_stage for r in data.runs) else "."))


def evaluation(data: ReportData, f: Findings, figs: dict[str, FigureFile]) -> Section:
    blocks: list = []
    for task in data.tasks:
        blocks.append(task_table(data, task))
    if not data.tasks:
        blocks.append(Para("No evaluation task."))
    table = epoch_table(data)
    if table is not None:
        blocks.append(table)
    if f.best and data.headline:
        blocks.append(Para(best_text(data, f)))
    for key in figs:
        if key.startswith("score_by_") or key == "score_per_epoch":
            blocks.append(figs[key].block())
    return Section("Evaluation", blocks)


def best_text(data: ReportData, f: Findings) -> str:
    """'Best run: X at 80.0 % [71.2, 86.9]', or the runs tied with it (paired intervals including zero)."""
    metric = data.headline.primary_metric if data.headline else None
    top = f.best[0]
    at = show_ci(f.best_score, top.interval(data.eval_task or ""), metric)
    if len(f.best) == 1:
        return f"**Best run:** {top.name} at {at}."
    others = "; ".join(f"{r.name} ({show_ci(r.score, r.interval(data.eval_task or ''), metric)}; {top.name} − "
                       f"{r.name}: {diff_text(f.best_vs.get(r.name), metric, (top.score or 0) - (r.score or 0))})"
                       for r in f.best[1:])
    return (f"**Best runs ({len(f.best)} tied):** {top.name} at {at}; tied within noise (paired 95 % interval of "
            f"the difference includes zero): {others}.")


def prompt_table(data: ReportData) -> Table | None:
    """Swept prompt templates by the short names runs and figures use."""
    if not data.prompts:
        return None
    return Table(["Prompt", "Template"], [[k, f"`{v}`" if v else "(rows bring their own)"] for k, v in
                                         data.prompts.items()], "Prompt templates swept (factor `prompt`).")


def effect_text(eff: Any) -> str:
    """One line: a factor's effect on a task's metric or the final val loss, with what it rests on."""
    if eff.metric == "score":
        what, metric = f"{eff.task} ({eff.score_metric})", eff.score_metric
        fmt = lambda v: show(v, metric)  # noqa: E731
        diff = lambda v: show_delta(v, metric)  # noqa: E731
    else:
        what, fmt, diff = "final val loss", (lambda v: f"{v:.4g}"), (lambda v: f"{v:+.4g}")
    levels = "; ".join(f"{s.level} → {fmt(s.mean)} (n={s.n})" for s in eff.levels)
    text = f"**{eff.factor}** on {what}: {levels}"
    if eff.spread is None:
        return text + " (only one level measured so far)."
    note = evidence_note(eff)
    if eff.replicated:
        best = f"Best level **{eff.best.level}**"
    else:  # an observation names where the mean is best, not a level to choose
        best = f"{'Highest' if eff.greater_is_better else 'Lowest'} at {eff.best.level}"
    d: Difference | None = eff.diff
    if d is None or not d.known:
        if eff.spread == 0:
            return text + f". No difference between levels ({note})."
        return text + f". {best}, {diff(eff.best.mean - eff.worst.mean)} vs {eff.worst.level} ({note})."
    shown = diff_text(d, metric if eff.metric == "score" else None)
    if eff.metric != "score":
        shown = f"{d.estimate:+.4g} [{d.low:+.4g}, {d.high:+.4g}]" + ("" if d.resolved else " — not resolved")
    if d.resolved:
        return text + f". {best}: {eff.best.level} − {eff.worst.level} = {shown} ({d.method}; {note})."
    return (text + f". No detectable difference between levels ({eff.best.level} − {eff.worst.level}: "
            f"{shown.removeprefix('no detectable difference (').removesuffix(')')}; {d.method}; {note}).")
