"""Built model directories kept in tunelab's cache, so that a second build of the same model from the same source
(SmolLM2 from its GGUF file: ~40 s of de-quantizing) is a copy of the first (~1 s). An entry is named by everything
the build's bytes depend on (the caller's key: the source file's digest, the reader's and transformers' versions,
the dtype); it is written beside its final name and renamed into place, so a reader sees a whole entry or none, and
one without its completeness record is ignored. Builders of one entry take turns (`one_builder`), so that two at once
(a sweep's jobs, a test session's workers) de-quantize once and the second copies. Failing to lock or to store an entry
only costs the next build the time."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from tunelab.diskcache import cache_dir
from tunelab.models.builddir import new_build_dir

FORMAT = 1  # bump when what an entry holds changes meaning


def entry_dir(name: str, key: dict) -> Path:
    """Where the build of `name` named by `key` is kept: $TUNELAB_CACHE/models/NAME-DIGEST."""
    digest = hashlib.sha256(json.dumps([FORMAT, name, key], sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir() / "models" / f"{name}-{digest}"


def copy_files(src: Path, dst: Path) -> None:
    """Every file of the flat directory src into dst (which exists), contents and modes."""
    for f in sorted(src.iterdir()):
        if f.is_file():
            shutil.copy2(f, dst / f.name)


def fetch(entry: Path, into: Path, complete: Callable[[Path], bool]) -> bool:
    """Copy a complete cached build into the (empty, existing) directory `into`; False when there is none or it
    vanished or was damaged meanwhile (the caller builds instead)."""
    if not complete(entry):
        return False
    try:
        copy_files(entry, into)
        if complete(into):
            return True
    except OSError:
        pass
    for f in into.iterdir():  # a part copied: the build starts from an empty directory again
        f.unlink()
    return False


def store(built: Path, entry: Path, log: Callable[[str], None] = lambda _msg: None) -> None:
    """Keep a copy of the complete build `built` as `entry` (nothing when one is there already)."""
    if entry.is_dir():
        return
    tmp = None
    try:
        tmp = new_build_dir(entry)  # a killed store's leftovers are removed here
        copy_files(built, tmp)
        os.rename(tmp, entry)  # fails when a concurrent build stored it first: theirs stands
        tmp = None
    except OSError as exc:
        if not entry.is_dir():
            log(f"could not keep a copy of the build in {entry.parent} ({exc.strerror or exc}); the next build "
                "de-quantizes again")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def one_builder(entry: Path, log: Callable[[str], None] = lambda _msg: None) -> Iterator[None]:
    """Hold the entry's lock (flock on a file beside it, released by the kernel if the holder dies) for the body;
    the body runs unlocked where the cache cannot be written or locked."""
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(entry.parent / f".{entry.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("waiting for another build of the same model to finish, to copy it…")
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass  # a filesystem without locks: build unlocked
        yield
    finally:
        os.close(fd)
