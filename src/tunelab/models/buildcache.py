"""Built model directories kept in tunelab's cache, so that a second build of the same model from the same source
(SmolLM2 from its GGUF file: ~40 s of de-quantizing) is a copy of the first (~1 s). An entry is named by everything
the build's bytes depend on (the caller's key: the source file's digest, the reader's and transformers' versions,
the dtype); it is written beside its final name and renamed into place, so a reader sees a whole entry or none, and
one without its completeness record is ignored. Builders of one entry take turns (`one_builder`), so that two at once
(a sweep's jobs, a test session's workers) de-quantize once and the second copies. Failing to lock or to store an entry
only costs the next build the time. A model's entries are kept to its KEEP most recently used (a copy from one, or its
store, marks its use): a new library release makes a new key, and the builds of the old one would otherwise stay
forever (270–540 MB each for SmolLM2)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tunelab.diskcache import cache_dir
from tunelab.models.builddir import new_build_dir

FORMAT = 1  # bump when what an entry holds changes meaning
# entries kept per model name, the most recently used: e.g. its float32 and bfloat16 builds and one of another
# environment that shares the cache
KEEP = 3
DIGEST_CHARS = 20


def entry_dir(name: str, key: dict) -> Path:
    """Where the build of `name` named by `key` is kept: $TUNELAB_CACHE/models/NAME-DIGEST."""
    digest = hashlib.sha256(json.dumps([FORMAT, name, key], sort_keys=True).encode()).hexdigest()
    return cache_dir() / "models" / f"{name}-{digest[:DIGEST_CHARS]}"


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
            _mark_used(entry)
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
        prune(entry, log)
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
        fd = os.open(_lock_path(entry), os.O_RDWR | os.O_CREAT, 0o644)
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


def _mark_used(entry: Path) -> None:
    """The entry's modification time set to now: what `prune` ranks entries by."""
    with contextlib.suppress(OSError):
        os.utime(entry)


def siblings(entry: Path) -> list[Path]:
    """The kept builds of `entry`'s model (its name before the digest), `entry` among them if it exists."""
    name = entry.name[:-DIGEST_CHARS - 1]
    pattern = re.compile(rf"{re.escape(name)}-[0-9a-f]{{{DIGEST_CHARS}}}")
    try:
        return [p for p in entry.parent.iterdir() if pattern.fullmatch(p.name) and p.is_dir()]
    except OSError:
        return []


def prune(keep: Path, log: Callable[[str], None] = lambda _msg: None, most: int = KEEP) -> list[Path]:
    """Remove the model's kept builds beyond the `most` most recently used, `keep` always among those kept; one that
    another process holds (its lock taken: a copy or a build under way) stays. Returns what was removed."""
    ranked = sorted(((_last_used(p), p) for p in siblings(keep) if p != keep), reverse=True)
    removed = []
    for used, old in ranked[max(most - 1, 0):]:
        if _remove_unless_held(old):
            removed.append(old)
            log(f"removed {old}, a build kept in the cache and last used "
                f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(used))} (a model's {most} most recently used builds "
                "are kept)")
    return removed


def _last_used(entry: Path) -> float:
    """When the entry was stored or last copied from (its modification time; 0 where it cannot be read)."""
    try:
        return entry.stat().st_mtime
    except OSError:
        return 0.0


def _lock_path(entry: Path) -> Path:
    """The file whose flock builders, copiers and `prune` take for the entry (beside it: it may not exist yet)."""
    return entry.parent / f".{entry.name}.lock"


def _remove_unless_held(entry: Path) -> bool:
    """Remove the entry (and its lock file) if its lock can be taken at once; False where another process holds it or
    the cache cannot be changed."""
    lock = _lock_path(entry)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError (an OSError) where another holds it
        shutil.rmtree(entry)
        lock.unlink(missing_ok=True)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
