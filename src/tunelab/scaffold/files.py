"""The files scaffold writes, as texts: every one is rendered before the first is written, so a spec or a
template that fails to render leaves the experiment directory as it was, never half-written."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunelab.fsutil import atomic_write_text


@dataclass(frozen=True)
class FileText:
    """One file to write: where, what, and how."""

    path: Path
    text: str
    durable: bool = True  # fsync; a generated file that a rerun rewrites identically skips it
    executable: bool = False  # a script (job.sh, submit_all.sh)


def write_files(files: list[FileText]) -> None:
    """Write each file atomically (a file that already holds its text is left alone)."""
    for f in files:
        atomic_write_text(f.path, f.text, durable=f.durable)
        if f.executable:
            f.path.chmod(0o755)
