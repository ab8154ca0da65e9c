"""`tunelab status --watch`: a live table of the sweep (per run progress, loss, speed, ETA; the caller's re-plan) until
nothing is queued or running; failures and the deadline's warning are printed the moment they are seen."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.text import Text

from tunelab.console import data_table, say, show
from tunelab.execute.failures import FailureKind
from tunelab.execute.status import EvalState, RowState, StatusRow, clock, eta_seconds, eval_failed, eval_label
from tunelab.rundir import MetricRow, Status, read_metrics, read_status
from tunelab.rundir.config import RunConfig
from tunelab.rundir.experiment import load_runs


@dataclass
class RunView:
    name: str
    kind: str
    state: RowState
    shown: str  # the state as the table says it (StatusRow.shown)
    step: int | None
    total: int | None
    loss: float | None
    tokens_per_s: float | None
    eta_s: float | None
    eval: EvalState | FailureKind | None
    detail: str
    reason: str = ""  # StatusRow.reason: the run's own line why it did not complete


def run_view(cfg: RunConfig, row: StatusRow) -> RunView:
    status = read_status(cfg.run_dir) if cfg.kind == "finetune" else Status()
    trained = [r for r in read_metrics(cfg.run_dir) if r.is_train] if status.to_json() else []
    last = trained[-1] if trained else MetricRow()
    return RunView(row.name, row.type, row.state, row.shown, status.step, status.total_steps, last.loss, last.tokens_per_s,
                   eta_seconds(cfg, status) if row.state == RowState.RUNNING else None, row.eval, row.detail or "",
                   row.reason)


def render(title: str, views: list[RunView], replan: str | None = None) -> Group:
    """The table and its footer: the counts, and the sweep's re-plan (`replan`: forecast/remaining.py's line — the
    plan's own forecast of what is left, the one makespan formula)."""
    rows: list[tuple[object, ...]] = []
    for v in views:
        bar = ProgressBar(total=v.total, completed=v.step or 0, width=20) if v.total else ""
        style = "red" if v.state.ended_badly else "green" if v.state == RowState.COMPLETED else ""
        rows.append((v.name, Text(v.shown, style=style), bar, f"{v.step}/{v.total}" if v.total else "",
                     f"{v.loss:.4f}" if v.loss is not None else "", f"{v.tokens_per_s:,.0f}" if v.tokens_per_s else "",
                     clock(v.eta_s), Text(eval_label(v.eval), style="red" if eval_failed(v.eval) else ""), v.detail))
    t = data_table(("run", "state", "progress", "step", "loss", "tok/s", "ETA", "eval", "detail"), rows, title=title,
                   overflow="fold", title_justify="left")
    done = sum(v.state == RowState.COMPLETED for v in views)
    failed = sum(v.state.ended_badly for v in views)
    counts = f"{done}/{len(views)} completed, {failed} failed"
    return Group(t, Text(f"{counts}; {replan}" if replan else counts))


Replan = Callable[[list[StatusRow]], tuple[str, str]]  # rows -> (the sweep's re-plan line, its warning or '')


def watch(experiment_dir: str | Path, rows_of: Callable[[], list[StatusRow]], console: Console,
          interval_s: float = 5.0, replan: Replan | None = None) -> list[StatusRow]:
    """Show the live table until no run (or its evaluation) is queued or running; return the last rows. `replan`:
    the sweep re-planned at each look (its warning printed above the table when it first says something new)."""
    configs = {c.name: c for c in load_runs(experiment_dir)}
    seen_failed: set[str] = set()
    warned = [""]

    def frame(rows: list[StatusRow]) -> Group:
        views = [run_view(configs[r.name], r) for r in rows if r.name in configs]
        for v in views:
            if v.state.ended_badly and v.name not in seen_failed:
                seen_failed.add(v.name)
                say("[red]{}: {}[/red] {}", v.name, v.shown, v.reason or v.detail, console=console)
        line, warning = replan(rows) if replan is not None else ("", "")
        if warning and not warned[0]:
            say("[yellow]{}[/yellow]", warning, console=console)
        warned[0] = warning
        return render(str(experiment_dir), views, line)

    rows = rows_of()
    seen_failed.update(r.name for r in rows if r.state.ended_badly)  # failed before we looked: in the table
    if not any(r.active for r in rows):
        show(frame(rows), console)
        say("nothing is queued or running: `tunelab run {}` starts the sweep", experiment_dir, console=console)
        return rows
    with Live(frame(rows), console=console, refresh_per_second=1) as live:
        while any(r.active for r in rows):
            time.sleep(interval_s)
            rows = rows_of()
            live.update(frame(rows))
    return rows
