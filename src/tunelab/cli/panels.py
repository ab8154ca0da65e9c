"""How `tunelab --help` is laid out: the commands in panels in the pipeline's order (one table, since several modules
register commands and the order matters as much as the grouping; a command missing here is listed last and
tests/unit/test_cli_help.py fails), and every command's help reflowed, since typer's rich help keeps a docstring's line
breaks inside a paragraph."""

from __future__ import annotations

import inspect
from typing import Any

from typer import _click  # typer's own copy of click, which TyperGroup is built on
from typer.core import TyperGroup

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
