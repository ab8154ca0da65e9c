"""What every CLI module shares: the error → one-red-line decorator, how a module adds its commands to the
app (`add_commands`, called by each module's `register`), and the plan table that `plan` and `init` both
print. Printing itself: tunelab.console.

Kept apart from cli.py so the command modules import it, and cli.py imports them, without an import cycle.
"""

from __future__ import annotations

import errno
import functools
import os
import sqlite3
import subprocess
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import typer

from tunelab.console import data_table, error, say, show, warn
from tunelab.errors import TunelabError
from tunelab.spec.resources import ExecutorKind

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
