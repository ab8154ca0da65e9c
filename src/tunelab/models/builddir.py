"""A model directory is built beside its final name and renamed into place, so that a reader (or a killed builder's
rerun) sees a whole directory or none; the builders of SmolLM2, of random-weight models and tunelab's cache of built
models share these steps."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

from tunelab.fsutil import UMASK
from tunelab.host.process import alive


def clean_stale_builds(out: Path) -> None:
    """Remove build dirs left by killed builders of `out` on this host (their name holds host and pid)."""
    prefix = f".{out.name}.tmp-{socket.gethostname()}-"
    for tmp in out.parent.glob(prefix + "*"):
        try:
            pid = int(tmp.name[len(prefix):].split("-", 1)[0])
        except ValueError:
            continue
        if not alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)


def new_build_dir(out: Path) -> Path:
    """A fresh build directory beside `out` (stale ones of dead builders removed first)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_builds(out)
    return Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-{socket.gethostname()}-{os.getpid()}-"))


def usual_modes(tmp: Path) -> None:
    """mkdtemp makes 0700 and safetensors 0600: give the model dir and its files the usual modes."""
    os.chmod(tmp, 0o777 & ~UMASK)
    for f in tmp.iterdir():
        os.chmod(f, 0o666 & ~UMASK)


def move_into_place(tmp: Path, out: Path, force: bool, complete: Callable[[Path], bool] = lambda _p: False) -> bool:
    """Rename tmp to out (an empty out replaced; with force a full one set aside, then removed); False when a concurrent
    builder put a complete model there first."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    old = None
    if out.exists() and force:
        old = out.with_name(f".{out.name}.old-{socket.gethostname()}-{os.getpid()}")
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        if old is not None:
            os.rename(old, out)
            raise
        if not complete(out):  # out appeared meanwhile and is not a complete build
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        return False
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return True
