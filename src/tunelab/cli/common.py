"""What every CLI module shares: the error → one-red-line decorator, how a module adds its commands to the
app (`add_commands`, called by each module's `register`), and the plan table that `plan` and `init` both
print. Printing itself: tunelab.console.

Kept apart from cli.py so the command modules import it, and cli.py imports them, without an import cycle.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from pydantic import BaseModel, TypeAdapter
from typer import _click  # typer's own copy of click, which TyperGroup is built on
from typer.core import TyperGroup

from tunelab.console import data_table, error, say, show, warn
from tunelab.errors import TunelabError
from tunelab.spec.resources import ExecutorKind

# Panel → its commands, both in the order a newcomer meets them: spec → plan → scaffold → run → eval → report.
PANELS: dict[str, tuple[str, ...]] = {
    "Start": ("init", "demo", "schema"),
    "Plan": ("plan", "estimate", "validate", "probe", "tune"),
    "Run": ("scaffold", "run", "status", "cancel", "train"),
    "Results": ("eval", "results", "report", "compare", "export"),
    "History": ("history", "ingest", "adopt", "archive"),
    "Data and models": ("data", "models"),
    "Assistants": ("mcp", "skills"),
}

_POSITION = {name: i for i, name in enumerate(n for names in PANELS.values() for n in names)}
_PANEL_OF = {name: panel for panel, names in PANELS.items() for name in names}


class PipelineGroup(TyperGroup):
    """The main app's command group: each command in its panel of PANELS, listed in PANELS' order."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name, command in self.commands.items():
            if name in _PANEL_OF and not getattr(command, "rich_help_panel", None):
                setattr(command, "rich_help_panel", _PANEL_OF[name])  # noqa: B010 (click declares no such attribute)
        reflow_help(self)

    def list_commands(self, ctx: _click.Context) -> list[str]:
        return sorted(super().list_commands(ctx), key=lambda name: _POSITION.get(name, len(_POSITION)))


def reflowed(text: str) -> str:
    """Each paragraph of a docstring on one line, so the terminal wraps it at its own width. A paragraph
    opened by click's `\\b` marker keeps its lines, as click's own help does."""
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(p if p.startswith("\b") else " ".join(p.split()) for p in paragraphs)


def reflow_help(command: _click.Command) -> None:
    """The help of this command and of every command under it, reflowed (sub-apps: data, models, skills)."""
    if command.help:
        command.help = reflowed(command.help)
    for sub in getattr(command, "commands", {}).values():
        reflow_help(sub)


@contextlib.contextmanager
def stdout_to_stderr(enabled: bool) -> Iterator[None]:
    """While the command works under --json, whatever would reach stdout goes to stderr (tunelab.console's
    consoles write to whatever sys.stdout is at the time)."""
    if not enabled:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


def emit(record: BaseModel | list[Any], row_type: Any = None) -> None:
    """The record as indented JSON on stdout (a list through TypeAdapter(list[row_type]))."""
    if isinstance(record, BaseModel):
        text = record.model_dump_json(indent=2)
    else:
        text = TypeAdapter(list[row_type]).dump_json(record, indent=2).decode()
    sys.stdout.write(text + "\n")


def json_option(what: str = "the result") -> Any:
    """The --json option every command with a table or a verdict takes."""
    return typer.Option(False, "--json", help=f"Print {what} as JSON (its schema: `tunelab schema --output "
                        "COMMAND`); progress goes to stderr.")


if TYPE_CHECKING:
    from tunelab.plan.planner import Plan

SHOWN_ROWS = 50  # rows of the plan's tables printed at the terminal

# What the machine, not the user's input, can do to any command: named plainly instead of a traceback.
_OS_WORDS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOSPC: "no space left on device; free some space, then rerun",
    errno.EDQUOT: "disk quota exceeded; free some space, then rerun",
    errno.EROFS: "read-only filesystem",
    errno.EFBIG: "file too large for this filesystem or limit",
}


def environment_error(exc: BaseException) -> str | None:
    """One line for a failure of the environment (files, disk, database lock, scheduler), else None (a bug:
    its traceback is what a maintainer needs)."""
    if isinstance(exc, subprocess.TimeoutExpired):
        cmd = exc.cmd if isinstance(exc.cmd, str) else " ".join(map(str, exc.cmd))
        return f"`{cmd}` did not answer within {exc.timeout:.3g} s (the scheduler is slow or down); try again later"
    if isinstance(exc, sqlite3.OperationalError):  # the ledgers name their file (fsutil.sqlite_session)
        return f"SQLite: {exc}" + ("; another tunelab command is writing the database" if "locked" in str(exc)
                                   else "")
    if isinstance(exc, OSError):
        words = (_OS_WORDS.get(exc.errno) if exc.errno is not None else None) or (exc.strerror or str(exc)).lower()
        files = [str(f) for f in (exc.filename, exc.filename2) if f is not None]
        return f"{' → '.join(files)}: {words}" if files else words
    return None


def friendly(fn):
    """TunelabError, and any failure of the environment (permission denied, disk full, locked database,
    scheduler timeout), become one red line on stderr and exit code 1, no traceback. TUNELAB_DEBUG=1
    re-raises environment failures for their traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TunelabError as exc:
            error(str(exc))
            raise typer.Exit(1) from None
        except (OSError, sqlite3.OperationalError, subprocess.TimeoutExpired) as exc:
            message = environment_error(exc)
            if message is None or os.environ.get("TUNELAB_DEBUG"):
                raise
            error(message)
            raise typer.Exit(1) from None

    return wrapper


EXECUTOR_METAVAR = "[" + "|".join(ExecutorKind) + "]"  # --executor's choices in --help, as typer shows a choice


def gpu_or_none(name: str | None, path: Path | None = None):
    """--gpu, else resources.gpu of the run.yaml or spec (merged with the user config file, the spec wins), else the
    detected GPU, else None: the sweep trains on this machine's CPU."""
    from tunelab.catalog import planning_gpu
    from tunelab.rundir.config import RUN_FILE, load_run_config

    named = None
    if not name and path is not None:
        if path.name == RUN_FILE or (path / RUN_FILE).is_file():
            named = load_run_config(path).resources.gpu
        elif path.is_file():
            from tunelab.spec import load_spec
            from tunelab.userconfig import merge_resources

            named = merge_resources(load_spec(path).resources).gpu
    return planning_gpu(name, named)  # None: no GPU named or here, a sweep for this machine's CPU


def executor_option(value: str) -> ExecutorKind:
    """`--executor`'s parser: the name as an ExecutorKind. An unknown name is the registry's own error
    (execute/executors.py), one red line and exit 1 like any TunelabError (typer's choice error would exit 2
    in other words)."""
    try:
        return ExecutorKind(value)
    except ValueError:
        from tunelab.execute.executors import executor_class

        try:
            return ExecutorKind(executor_class(value).name)  # the registry's message for a name it does not know
        except TunelabError as exc:
            error(str(exc))
            raise typer.Exit(1) from None


def add_commands(app: typer.Typer, commands: dict[str, Callable[..., Any]], hidden: bool = False) -> None:
    """Each function as the command of that name, its failures shown as one red line (`friendly`)."""
    for name, fn in commands.items():
        app.command(name, hidden=hidden)(friendly(fn))


def print_plan(plan: Plan) -> None:
    """The plan's runs (and stages) as tables, its recipe, notes and warnings."""
    from tunelab.plan.markdown import gpu_notes, plan_rows, stage_rows

    title = f"{plan.spec.name}: {len(plan.finetune_runs)} fine-tuned + {len(plan.controls)} controls"
    for rows in (plan_rows(plan), stage_rows(plan)):
        if rows:  # a 1,000-run table helps nobody at a prompt (and takes seconds)
            show(data_table(rows[0], [r.values() for r in rows[:SHOWN_ROWS]], title=title))
            if len(rows) > SHOWN_ROWS:
                say("… and {} more rows: plan.md (or `plan --json`) lists them all", len(rows) - SHOWN_ROWS)
        title = "stages (steps and time per stage; the run's are their sum)"
    say("recipe: {}", plan.recipe)
    for note in plan.resolution:
        say("resolution: {}", note)
    for note in gpu_notes(plan):
        say("GPUs and nodes: {}", note)
    if plan.forecast is not None and plan.forecast.makespan_s is not None:  # plan.md's and run.yaml's figure
        from tunelab.fsutil import human_seconds

        f, span = plan.forecast, plan.forecast.makespan_s
        low, high = (span if x is None else x for x in (f.makespan_p10_s, f.makespan_p90_s))
        say("predicted makespan {} (P10–P90 {}–{}): training, evaluation and job start-ups, longest first on {}",
            human_seconds(span), human_seconds(low), human_seconds(high), f.devices_source)
    if plan.search:
        from tunelab.plan.deadline_md import search_summary

        say("learning-rate search (tunelab tune): {}", search_summary(plan.search))
    if plan.deadline is not None:
        from tunelab.plan.deadline_md import verdict_line

        say("{}", verdict_line(plan.deadline).replace("**", ""))
    for w in plan.warnings:
        warn(w)
