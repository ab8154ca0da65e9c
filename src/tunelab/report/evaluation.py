"""The report's Evaluation section: one table per task (every metric of each run, control and eval-only
checkpoint), the per-epoch table of the headline task, and the score figures.

Fractions (accuracy, F1, parse rate, …) print as percentages and differences as percentage points;
other metrics (MAE, Brier, a task file's own) print as numbers.
"""

from __future__ import annotations

from typing import Any

from tunelab.evaluate.metrics import FRACTIONS
from tunelab.report.data import ReportData, RunData, TaskInfo
from tunelab.report.document import Figure, Para, Section, Table
from tunelab.report.figures import FigureFile
from tunelab.report.findings import Findings

HIDDEN_METRICS = ("stderr", "std")  # uncertainty of a metric, not a score of its own


def is_fraction(metric: str | None) -> bool:
    return (metric or "").split("/")[-1] in FRACTIONS


def show(v: float | None, metric: str | None) -> str:
    """A metric value: '80.0 %' for fractions, '0.1234' otherwise, '—' when missing."""
    if v is None:
        return "—"
    return f"{100 * v:.1f} %" if is_fraction(metric) else f"{v:.4g}"


def show_delta(v: float | None, metric: str | None) -> str:
    if v is None:
        return "—"
    return f"{100 * v:+.1f} pp" if is_fraction(metric) else f"{v:+.4g}"


def _fig(f: FigureFile) -> Figure:
    return Figure(f"figures/{f.path.name}", f.caption, alt=f.key.replace("_", " "))


def task_metrics(task: TaskInfo) -> list[str]:
    rest = [m for m in task.metrics if m != task.primary_metric and m.split("/")[-1] not in HIDDEN_METRICS]
    return ([task.primary_metric] if task.primary_metric else []) + rest


def _rows_of(run: RunData, task: TaskInfo, metrics: list[str], base: float | None) -> list[list[str]]:
    evals = run.task_evals(task.name) or [{"label": "—", "score": None, "samples": None, "metrics": {}}]
    rows = []
    for e in evals:
        delta = None if e["score"] is None or base is None else e["score"] - base
        rows.append([run.name, run.kind, e["label"], *[show(e["metrics"].get(m), m) for m in metrics],
                     show_delta(delta, task.primary_metric) if run.kind == "fine-tuned" else "—",
                     "—" if e["samples"] is None else str(e["samples"])])
    return rows


def task_table(data: ReportData, task: TaskInfo) -> Table:
    """Every run, control and eval-only checkpoint on one task, all its metrics."""
    metrics = task_metrics(task)
    rows = []
    for r in data.runs:
        ctl = data.control_for(r)
        rows += _rows_of(r, task, metrics, ctl.value(task.name) if ctl else None)
    for c in data.references:
        rows += _rows_of(c, task, metrics, None)
    where = f"{task.source}" + (f" on {task.dataset} / {task.split}" if task.dataset else "")
    better = "higher" if task.greater_is_better else "lower"
    header = ["Run", "Type", "Checkpoint", *[m + (" ★" if m == task.primary_metric else "") for m in metrics],
              "Δ★ vs control", "Samples"]
    return Table(header, rows, f"Task **{task.name}** ({where}); ★ primary metric ({better} is better); from "
                 f"`eval/<checkpoint>/{task.name}/scores.json` (inspect-ai `.eval` logs beside them); Δ = fine-tuned "
                 "minus the same model's base-model control.")


def epoch_table(data: ReportData) -> Table | None:
    head = data.headline
    if head is None:
        return None
    epochs = sorted({e["epoch"] for r in data.runs for e in r.task_evals(head.name) if e.get("epoch") is not None})
    if len(epochs) < 2:
        return None
    rows = []
    for r in data.runs:
        by = {e["epoch"]: e["score"] for e in r.task_evals(head.name) if e.get("epoch") is not None}
        rows.append([r.name, *[show(by.get(e), head.primary_metric) for e in epochs]])
    return Table(["Run", *[f"epoch_{e}" for e in epochs]], rows,
                 f"{head.name} ({head.primary_metric}) per evaluated epoch.")


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
        label = "Best run" if len(f.best) == 1 else f"Best runs ({len(f.best)} tied)"
        blocks.append(Para(f"**{label}:** {', '.join(r.name for r in f.best)} at "
                           f"{show(f.best_score, data.headline.primary_metric)}."))
    for key in figs:
        if key.startswith("score_by_") or key == "score_per_epoch":
            blocks.append(_fig(figs[key]))
    return Section("Evaluation", blocks)


def prompt_table(data: ReportData) -> Table | None:
    """Swept prompt templates by the short names runs and figures use."""
    if not data.prompts:
        return None
    return Table(["Prompt", "Template"], [[k, f"`{v}`" if v else "(rows bring their own)"] for k, v in
                                         data.prompts.items()], "Prompt templates swept (factor `prompt`).")


def effect_text(eff: Any) -> str:
    """One finding line: a factor's effect on a task's primary metric or on the final validation loss."""
    if eff.metric == "score":
        what, metric = f"{eff.task} ({eff.score_metric})", eff.score_metric
        fmt = lambda v: show(v, metric)  # noqa: E731
        diff = lambda v: show_delta(v, metric)  # noqa: E731
    else:
        what, fmt, diff = "final val loss", (lambda v: f"{v:.4g}"), (lambda v: f"{v:+.4g}")
    levels = "; ".join(f"{s.level} → {fmt(s.mean)} (n={s.n})" for s in eff.levels)
    text = f"**{eff.factor}** on {what}: {levels}"
    if eff.spread == 0:
        return text + ". No difference between levels."
    if eff.spread is None:
        return text + " (only one level measured so far)."
    return text + f". Best level **{eff.best.level}**, {diff(eff.best.mean - eff.worst.mean)} vs {eff.worst.level}."
