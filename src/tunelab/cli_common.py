"""What every CLI module shares: the consoles and the TunelabError → one-red-line decorator.

Kept apart from cli.py so sub-app modules (cli_build) can import it without an import cycle.
"""

from __future__ import annotations

import functools

import typer
from rich.console import Console

from tunelab.errors import TunelabError

console = Console()
err_console = Console(stderr=True)


def friendly(fn):
    """Turn TunelabError into one red line on stderr and exit code 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TunelabError as exc:
            err_console.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper
