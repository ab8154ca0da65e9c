"""Report figures with matplotlib (Agg canvas, no pyplot state) under report/figures/: every axis labelled with its
unit, every figure drawn from ReportData fields only."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

from tunelab.evaluate.kinds import is_fraction
from tunelab.faults import kill_point
from tunelab.fsutil import space_guard
from tunelab.report import document
from tunelab.report.data import ReportData, RunData
from tunelab.rundir.layout import RunState
from tunelab.rundir.memory import memory_labels

DPI = 110
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")


@dataclass
class FigureFile:
    key: str
    path: Path
    caption: str

    def block(self) -> document.Figure:
        return document.Figure(f"figures/{self.path.name}", self.caption, alt=self.key.replace("_", " "))


def _new(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _style(ax) -> None:
    ax.grid(True, which="major", alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _save(fig, out_dir: Path, key: str, caption: str) -> FigureFile:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{key}.png"
    with space_guard(path):  # a full disk: one NoSpaceError naming the figure
        fig.savefig(path, dpi=DPI, facecolor="white")
    kill_point("report.figure", key)  # the fault benchmark: some figures written, the report not
    return FigureFile(key, path, caption)


def _scale(metric: str | None) -> float:
    """Fractions (accuracy, F1, …) are drawn in percent; other metrics (MAE, Brier, a user's) as they are."""
    return 100.0 if is_fraction(metric) else 1.0


def _axis_label(task: str, metric: str | None) -> str:
    return f"{task}: {metric or 'score'}" + (" (%)" if is_fraction(metric) else "")


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text)


def _fmt(v: float, metric: str | None) -> str:
    return f"{v:.1f}" if is_fraction(metric) else f"{v:.3g}"


def _errors(ys: list[float], intervals: list[tuple[float, float] | None], k: float) -> list[list[float]]:
    """matplotlib's asymmetric error bars (below, above) from 95 % intervals; 0 where none is known."""
    below = [max(y - k * iv[0], 0.0) if iv else 0.0 for y, iv in zip(ys, intervals)]
    above = [max(k * iv[1] - y, 0.0) if iv else 0.0 for y, iv in zip(ys, intervals)]
    return [below, above]


def level_interval(data: ReportData, runs: list[RunData], task: str, metric: str | None) -> tuple[float, float] | None:
    """A level's 95 % interval: one run's own; several runs' across seeds (t), else bootstrapped on shared samples."""
    from tunelab.report.comparisons import replicated
    from tunelab.stats.paired import mean_interval
    from tunelab.stats.replicates import across_replicates

    if not runs or metric is None:
        return None
    if len(runs) == 1:
        return runs[0].interval(task, metric)
    if replicated(data):
        s = across_replicates([v for r in runs if (v := r.value(task, metric)) is not None])
        return (s.low, s.high) if s.low is not None and s.high is not None else None
    return mean_interval([r.sample_scores(task) for r in runs], metric)


def loss_curves(data: ReportData, out_dir: Path) -> FigureFile | None:
    runs = [r for r in data.runs if r.train_loss or r.val_loss]
    if not runs:
        return None
    n = len(runs)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig = _new(4.0 * ncols + 0.6, 2.8 * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.set_visible(False)
            continue
        r = runs[i]
        loss_axis(ax, r)
        if i % ncols == 0:
            ax.set_ylabel("loss (nats/token, log)")
        if i >= n - ncols:
            ax.set_xlabel("optimizer step")
            ax.tick_params(labelbottom=True)
    axes.flat[0].legend(fontsize=8, frameon=False, loc="upper right")
    staged = any(r.config.stages for r in runs)
    fig.suptitle("Training (solid) and validation (dashed) loss per run; dotted lines: epoch ends"
                 + ("; grey dashed: stage starts" if staged else ""), fontsize=11)
    return _save(fig, out_dir, "loss_curves",
                 "Training loss (solid) and validation loss (dashed) per run, log scale; from each run's "
                 "`metrics.jsonl`" + ("; a staged run's stages (named at their first step; steps count on across "
                                      "stages) from its `stages.json`." if staged else "."))


def loss_axis(ax, r: RunData) -> None:
    """One run's losses on one axis, its epoch ends dotted (and a staged run's stage starts)."""
    if r.train_loss:
        ax.plot([p.step for p in r.train_loss], [p.value for p in r.train_loss], color=PALETTE[0], lw=1.4,
                label="train loss")
    if r.val_loss:
        ax.plot([p.step for p in r.val_loss], [p.value for p in r.val_loss], color=PALETTE[1], lw=1.6, ls="--",
                marker="o", ms=3, label="validation loss")
    if r.config.stages:
        _stage_marks(ax, r)
    else:
        last = max(r.train_loss + r.val_loss, key=lambda p: p.step)
        if last.epoch and last.epoch >= 1:
            per_epoch = last.step / last.epoch
            for e in range(1, int(last.epoch + 1e-6) + 1):
                ax.axvline(e * per_epoch, color="#999", lw=0.7, ls=":", zorder=0)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(lambda v, _pos: f"{v:g}")
    ax.yaxis.set_minor_formatter(_plain_minor)
    ax.set_title(r.name + ("" if r.state == RunState.COMPLETED else f" ({r.state})"), fontsize=10)
    _style(ax)


def _stage_marks(ax, r: RunData) -> None:
    """A staged run: each stage's start (grey dashed, named) and the epoch ends of its completed stages, from
    the steps stages.json records (stages may differ in steps per epoch: other data, another batch size)."""
    for rec in r.stages:
        per_epoch = (rec.last_step - rec.first_step) / len(rec.epochs) if rec.epochs else 0
        for k in range(1, len(rec.epochs) + 1):
            ax.axvline(rec.first_step + k * per_epoch, color="#999", lw=0.7, ls=":", zorder=0)
    for step, name in r.stage_starts():
        ax.axvline(step, color="#555", lw=1.1, ls="--", zorder=1, gid=f"stage:{name}")
        ax.annotate(name, (step, 1), xycoords=("data", "axes fraction"), xytext=(3, -3), textcoords="offset points",
                    ha="left", va="top", fontsize=8, color="#555")


def _plain_minor(v: float, _pos=None) -> str:
    """Label a few minor ticks of a log axis (2, 3, 5 × 10^k) so short ranges still read."""
    lead = round(v / 10 ** math.floor(math.log10(v)), 6) if v > 0 else 0
    return f"{v:g}" if lead in (2, 3, 5) else ""


def _model_colors(data: ReportData) -> dict[str, str]:
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(data.models)}


def _control_lines(ax, data: ReportData, colors: dict[str, str], task: str, metric: str | None,
                   vertical: bool = False) -> None:
    """Controls (dashed) and eval-only checkpoints (dotted) as reference lines."""
    for c in data.references:
        v = c.value(task, metric)
        if v is None:
            continue
        line, span = (ax.axvline, ax.axvspan) if vertical else (ax.axhline, ax.axhspan)
        what = "control" if c.is_control else "eval-only"
        color = colors.get(c.model, "#555")
        line(_scale(metric) * v, color=color, ls="--" if c.is_control else ":", lw=1.2,
             alpha=0.8, label=f"{what} {c.name} ({_fmt(_scale(metric) * v, metric)})")
        iv = c.interval(task, metric)
        if iv is not None:  # its 95 % interval as a band
            span(_scale(metric) * iv[0], _scale(metric) * iv[1], color=color, alpha=0.08, lw=0)


def score_by_factor(data: ReportData, factor: str, task: str, metric: str | None, out_dir: Path) -> FigureFile | None:
    """One task's metric (last evaluated checkpoint) against a factor's levels, one line per model."""
    levels = data.factors.get(factor, [])
    colors = _model_colors(data)
    k = _scale(metric)
    fig = _new(6.4, 3.8)
    ax = fig.subplots()
    drew = False
    for model in data.models:
        xs, ys, ivs = [], [], []
        for i, level in enumerate(levels):
            runs = [r for r in data.completed if r.model == model and r.level(factor) == level
                    and r.value(task, metric) is not None]
            values = [v for r in runs if (v := r.value(task, metric)) is not None]
            if runs:
                xs.append(i)
                ys.append(k * mean(values))
                ivs.append(level_interval(data, runs, task, metric))
        if not ys:
            continue
        drew = True
        ax.errorbar(xs, ys, yerr=_errors(ys, ivs, k), marker="o", ms=7, lw=2, capsize=4, color=colors[model],
                    label=f"{model} (fine-tuned)")
        for x, y in zip(xs, ys):
            ax.annotate(_fmt(y, metric), (x, y), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=9,
                        color=colors[model])
    if not drew:
        return None
    _control_lines(ax, data, colors, task, metric)
    ax.set_xticks(range(len(levels)), [str(v) for v in levels])
    ax.set_xlim(-0.4, len(levels) - 0.6)
    if is_fraction(metric):
        ax.set_ylim(-3, 108)
    ax.set_xlabel(f"{factor} (level)")
    ax.set_ylabel(_axis_label(task, metric))
    ax.set_title(f"{task} {metric} by {factor} (95 % intervals); references dashed/dotted", fontsize=10)
    _style(ax)
    ax.legend(fontsize=8, frameon=False, loc="best")
    return _save(fig, out_dir, f"score_by_{_slug(factor)}__{_slug(task)}__{_slug(metric or 'score')}",
                 f"Task {task}, {metric} vs {factor}: one line per model (mean over runs at each level), error bars "
                 "and shaded bands: 95 % intervals (a run's own; several runs: across seeds when swept, else bootstrap "
                 "on the shared test samples); base-model controls dashed, eval-only checkpoints dotted; from "
                 "`eval/*/<task>/scores.json`.")


def score_by_run(data: ReportData, task: str, metric: str | None, out_dir: Path) -> FigureFile | None:
    runs = [r for r in data.runs if r.value(task, metric) is not None]
    if not runs:
        return None
    colors = _model_colors(data)
    k = _scale(metric)
    vals = [k * r.value(task, metric) for r in runs]  # type: ignore[operator]
    fig = _new(6.4, 1.4 + 0.32 * len(runs))
    ax = fig.subplots()
    ys = list(range(len(runs)))[::-1]
    ax.barh(ys, vals, height=0.6, color=[colors.get(r.model, PALETTE[0]) for r in runs],
            xerr=_errors(vals, [r.interval(task, metric) for r in runs], k), capsize=3, ecolor="#333")
    for y, v in zip(ys, vals):
        ax.annotate(_fmt(v, metric), (v, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=9)
    _control_lines(ax, data, colors, task, metric, vertical=True)
    ax.set_yticks(ys, [r.name for r in runs])
    if is_fraction(metric):
        ax.set_xlim(0, 110)
    ax.set_xlabel(_axis_label(task, metric))
    ax.set_title(f"{task} per run, last evaluated checkpoint; references dashed/dotted", fontsize=10)
    _style(ax)
    if data.references:
        ax.legend(fontsize=8, frameon=False)
    return _save(fig, out_dir, f"score_by_run__{_slug(task)}", f"Task {task} ({metric}) per run with its 95 % "
                 "interval (error bars); from `eval/*/<task>/scores.json`.")


def score_per_epoch(data: ReportData, out_dir: Path) -> FigureFile | None:
    head = data.headline
    if head is None:
        return None
    task, metric = head.name, head.primary_metric
    runs = [r for r in data.runs if len([e for e in r.task_evals(task) if e.epoch is not None]) > 1]
    if not runs:
        return None
    k = _scale(metric)
    fig = _new(6.4, 3.8)
    ax = fig.subplots()
    for i, r in enumerate(runs):
        pts = [(e.epoch, k * e.score, r.interval(task, metric, e.label)) for e in r.task_evals(task)
               if e.epoch is not None and e.score is not None]
        ys = [p[1] for p in pts]
        ax.errorbar([p[0] for p in pts], ys, yerr=_errors(ys, [p[2] for p in pts], k), marker="o", lw=1.8,
                    capsize=3, color=PALETTE[i % len(PALETTE)], label=r.name)
    _control_lines(ax, data, {m: "#555" for m in data.models}, task, metric)
    epochs = sorted({e.epoch for r in runs for e in r.task_evals(task) if e.epoch is not None})
    ticks = epoch_ticks(data, epochs)
    ax.set_xticks(epochs, ticks)
    for x, name in stage_changes(data, epochs):
        ax.axvline(x, color="#555", lw=1.0, ls="-.", zorder=0, gid=f"stage:{name}")
        ax.annotate(name, (x, 1), xycoords=("data", "axes fraction"), xytext=(3, -3), textcoords="offset points",
                    ha="left", va="top", fontsize=8, color="#555")
    if is_fraction(metric):
        ax.set_ylim(-3, 105)
    ax.set_xlabel("epoch (checkpoint epoch_N" + ("; STAGE/epoch_K under it; dash-dot: a new stage)" if ticks != [
        str(e) for e in epochs] else ")"))
    ax.set_ylabel(_axis_label(task, metric))
    ax.set_title(f"{task} per evaluated epoch; references dashed/dotted", fontsize=10)
    _style(ax)
    ax.legend(fontsize=8, frameon=False, ncols=2 if len(runs) > 6 else 1)
    return _save(fig, out_dir, "score_per_epoch", f"Task {task} ({metric}) of each evaluated checkpoint with its "
                 "95 % interval; from `eval/epoch_N/<task>/scores.json`.")


def epoch_ticks(data: ReportData, epochs: list[int]) -> list[str]:
    """Epoch tick labels: 'N', with the stage label under it where every run shares it ('2\\nhard/epoch_1')."""
    return [str(e) + (f"\n{lab}" if (lab := data.shared_stage(e)) else "") for e in epochs]


def stage_changes(data: ReportData, epochs: list[int]) -> list[tuple[float, str]]:
    """(x, stage) where a stage every run shares begins: half an epoch before its first evaluated epoch."""
    span = range(epochs[0], epochs[-1] + 1) if epochs else range(0)
    stage = {e: lab.split("/")[0] for e in span if (lab := data.shared_stage(e))}
    return [(e - 0.5, stage[e]) for e in span[1:] if e - 1 in stage and e in stage and stage[e - 1] != stage[e]]


def throughput_memory(data: ReportData, out_dir: Path) -> FigureFile | None:
    runs = [r for r in data.runs if r.summary.tokens_per_s is not None or r.summary.peak_memory_gib is not None]
    if not runs:
        return None
    colors = _model_colors(data)
    fig = _new(9.0, 1.3 + 0.32 * len(runs))
    ax1, ax2 = fig.subplots(1, 2, sharey=True)
    ys = list(range(len(runs)))[::-1]
    cols = [colors.get(r.model, PALETTE[0]) for r in runs]
    tps = [r.summary.tokens_per_s or 0 for r in runs]
    mem = [r.summary.peak_memory_gib or 0 for r in runs]
    ax1.barh(ys, tps, color=cols, height=0.6)
    ax2.barh(ys, mem, color=cols, alpha=0.85, height=0.6)
    for y, v in zip(ys, tps):
        ax1.annotate(f"{v:,.0f}", (v, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    for y, v in zip(ys, mem):
        ax2.annotate(f"{v:.2f}", (v, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    ax1.set_yticks(ys, [r.name for r in runs])
    ax1.set_xlim(0, max(tps + [1]) * 1.2)
    ax2.set_xlim(0, max(mem + [0.1]) * 1.25)
    kinds = {k for r in runs if (k := r.summary.memory_kind) is not None}
    ax1.set_xlabel("throughput (tokens/s, steady-state mean)")
    ax2.set_xlabel("peak memory (GiB, " + memory_labels(kinds) + ")")
    ax1.set_title("Throughput per run", fontsize=11)
    ax2.set_title("Peak memory per run", fontsize=11)
    _style(ax1)
    _style(ax2)
    return _save(fig, out_dir, "throughput_memory", "Tokens per second (training time only, after warm-up) and "
                 "peak memory per run; from each run's `summary.json`.")


def make_figures(data: ReportData, out_dir: str | Path) -> dict[str, FigureFile]:
    """All figures that have data to show, by key. Old figure files are removed first."""
    out_dir = Path(out_dir)
    if out_dir.is_dir():
        for old in out_dir.glob("*.png"):
            old.unlink()
    figs: list[FigureFile | None] = [loss_curves(data, out_dir)]
    swept = [f for f in data.factors if f not in ("model", "dataset", "seed")]  # seeds are replicates
    for factor in swept:
        for task in data.tasks:
            for metric in task.shown_metrics():
                figs.append(score_by_factor(data, factor, task.name, metric, out_dir))
    if not swept:
        figs += [score_by_run(data, t.name, t.primary_metric, out_dir) for t in data.tasks]
    figs += [score_per_epoch(data, out_dir), throughput_memory(data, out_dir)]
    return {f.key: f for f in figs if f is not None}
