"""What every CLI module shares: the error → one-red-line decorator (printing itself: tunelab.console).

Kept apart from cli.py so sub-app modules (cli_build) can import it without an import cycle.
"""

from __future__ import annotations

import errno
import functools
import os
import sqlite3
import subprocess

import typer

from tunelab.console import error
from tunelab.errors import TunelabError

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
        words = _OS_WORDS.get(exc.errno) or (exc.strerror or str(exc)).lower()
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
