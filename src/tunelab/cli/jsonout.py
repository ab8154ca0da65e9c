"""How a command prints its --json: the typed record alone on stdout, everything else (progress bars, say
lines, a library's own prints) on stderr, so `tunelab CMD --json | jq` always reads one JSON document."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, TypeAdapter


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
    import typer

    return typer.Option(False, "--json", help=f"Print {what} as JSON (its schema: `tunelab schema --output "
                        "COMMAND`); progress goes to stderr.")
