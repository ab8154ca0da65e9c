"""cli: the typer app (`tunelab`, entry point `tunelab.cli:app`); one module per group of commands."""

from tunelab.cli.main import app

__all__ = ["app"]
