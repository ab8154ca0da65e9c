"""The one way tunelab prints to the terminal: rich reads anything in square brackets as markup, so text from
data (paths, names, values, lists, warnings, errors, reasons) would lose its `[...]`. Here the templates keep
their markup and every value is inserted as plain text; call sites never escape anything themselves.

    say("[green]wrote[/green] {}", path)       # template markup styles, the path stays as it is
    warn(message); error(message)              # a yellow / red label, the message verbatim
    data_table(columns, rows, title=...)       # every header, cell and title as plain text
"""

from __future__ import annotations

import string
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console, OverflowMethod, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, Task, TimeElapsedColumn
from rich.protocol import is_renderable
from rich.table import Table
from rich.text import Text

console = Console()
err_console = Console(stderr=True)
_STDOUT = console  # the default of the functions below (their `console` argument shadows the name)

_SLOT = "\ue000"  # a private-use character: stands for a value while the template's markup is parsed


class _Slots(string.Formatter):
    """str.format's field formatting (conversions, format specs), with each field's text set aside and a slot
    left in the markup in its place."""

    def __init__(self) -> None:
        self.values: list[str] = []

    def format_field(self, value: Any, format_spec: str) -> str:
        self.values.append(super().format_field(value, format_spec))
        return _SLOT


def markup(template: str, *values: Any, **named: Any) -> Text:
    """The template (rich markup, str.format fields) with its fields filled by values as plain text: a value
    takes the style around its field and is never parsed, whatever brackets or backslashes it holds."""
    slots = _Slots()
    parsed = Text.from_markup(slots.vformat(template, values, named))
    at = [i for i, ch in enumerate(parsed.plain) if ch == _SLOT]
    if len(at) != len(slots.values):
        raise ValueError(f"a field of {template!r} sits inside a markup tag: values go between tags")
    out, start = Text(), 0
    for value, i in zip(slots.values, at):
        out.append_text(parsed[start:i])
        piece = parsed[i:i + 1]
        filled = Text(value, style=piece.style)
        for span in piece.spans:
            filled.stylize(span.style)
        out.append_text(filled)
        start = i + 1
    out.append_text(parsed[start:])
    return out


def say(template: str, *values: Any, console: Console | None = None, **named: Any) -> None:
    """Print one line (`markup`): long lines are left whole for the terminal to wrap, so paths copy intact."""
    (console or _STDOUT).print(markup(template, *values, **named), soft_wrap=True)


@contextmanager
def working(template: str, *values: Any, **named: Any) -> Iterator[None]:
    """Long work that prints nothing of its own (a first plan timing this machine: a minute or two of silence
    otherwise): one line on stderr as it starts, one with its seconds as it ends. stderr, so that --json output and
    an MCP server's stdout (its protocol) stay clean."""
    say("[dim]" + template + " …[/dim]", *values, console=err_console, **named)
    started = time.perf_counter()
    yield
    say("[dim]" + template + ": {:.0f} s[/dim]", *values, time.perf_counter() - started, console=err_console,
        **named)


def warn(text: str, console: Console | None = None) -> None:
    say("[yellow]warning:[/yellow] {}", text, console=console)


def error(text: str, console: Console | None = None) -> None:
    """A red `error:` line on stderr (or the console given)."""
    say("[bold red]error:[/bold red] {}", text, console=console or err_console)


def cell(value: Any) -> RenderableType:
    """A table cell, title or header: text as plain text, None as empty; rich renderables (a Text with its
    own style, a progress bar) as they are."""
    if value is None:
        return Text("")
    if isinstance(value, str):
        return Text(value)
    return value if is_renderable(value) else Text(str(value))


def data_table(columns: Iterable[Any], rows: Iterable[Iterable[Any]], title: str | Text | None = None,
               overflow: OverflowMethod | None = None, **options: Any) -> Table:
    """A rich table whose title (plain text or a Text), headers and cells are all `cell`s. overflow: of every
    column (e.g. "fold")."""
    table = Table(title=Text(title) if isinstance(title, str) else title, **options)
    for col in columns:
        if overflow:
            table.add_column(cell(col), overflow=overflow)
        else:
            table.add_column(cell(col))
    for row in rows:
        table.add_row(*map(cell, row))
    return table


def show(renderable: RenderableType, console: Console | None = None) -> None:
    """Print a table or another renderable; text goes through `say` (a str here would be read as markup)."""
    if isinstance(renderable, str):
        raise TypeError("show() prints renderables; text goes through say()")
    (console or _STDOUT).print(renderable)


def rule(title: str, console: Console | None = None) -> None:
    """A horizontal rule with a title (plain text)."""
    (console or _STDOUT).rule(Text(title))


class _Description(ProgressColumn):
    """A task's description: a Text from `markup` as it is, any other text as plain text."""

    def render(self, task: Task) -> Text:
        d = task.description
        return d if isinstance(d, Text) else Text(str(d))


def progress_columns() -> tuple[ProgressColumn, ...]:
    """Description, bar, done/total, time: the columns of the training and evaluation progress displays.
    Descriptions are plain text, or a Text from `markup` for styled ones."""
    return _Description(), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
