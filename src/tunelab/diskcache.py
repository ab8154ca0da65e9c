"""A small on-disk cache of JSON results that are slow to compute and fully determined by their key (the
token lengths a tokenizer measured for a dataset): a second `plan`/`scaffold` of the same inputs skips the
tokenizer and its imports. Keys name every input, including the stamps (mtime, size) of the files read, so a
changed file is measured again. Location: $TUNELAB_CACHE, else $XDG_CACHE_HOME/tunelab, else ~/.cache/tunelab.
A damaged or unreadable entry is recomputed; failing to write one only costs the next run the time."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunelab.errors import NoSpaceError
from tunelab.fsutil import atomic_write_text

FORMAT = 1  # bump when what an entry holds changes meaning


def cache_dir() -> Path:
    env = os.environ.get("TUNELAB_CACHE")
    return Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tunelab"


def this_environment() -> str:
    """The Python environment a key names (its prefix, normalized): the same for `.venv/bin/python` and
    `benchmarks/../.venv/bin/python`, which sys.executable is not; another venv is another key."""
    return os.path.normpath(sys.prefix)


def file_stamps(paths: list[str | Path]) -> list[tuple[str, int, int]]:
    """(path, mtime_ns, size) of each existing file: part of a key, so a rewritten file misses."""
    out = []
    for p in paths:
        try:
            st = Path(p).stat()
        except OSError:
            continue
        out.append((str(p), st.st_mtime_ns, st.st_size))
    return out


def file_digests(paths: list[str | Path]) -> list[str]:
    """The sha256 of each existing file's bytes: part of a key where only what a file says matters, not where it
    is (two copies of one model's config.json share a timing; an edited one misses)."""
    out = []
    for p in paths:
        try:
            out.append(hashlib.sha256(Path(p).read_bytes()).hexdigest())
        except OSError:
            continue
    return out


def _entry(kind: str, key: Any) -> Path:
    digest = hashlib.sha256(json.dumps([FORMAT, kind, key], sort_keys=True, default=str).encode()).hexdigest()
    return cache_dir() / kind / f"{digest[:32]}.json"


def stored_json(kind: str, key: Any) -> Any | None:
    """The value kept for exactly this key; None when there is none (or it cannot be read)."""
    try:
        return json.loads(_entry(kind, key).read_text())["value"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def store_json(kind: str, key: Any, value: Any) -> None:
    """Keep value for this key (atomically; failing to write only costs the next reader the time)."""
    path = _entry(kind, key)
    try:
        atomic_write_text(path, json.dumps({"key": key, "value": value}, default=str), durable=False)
    except (OSError, NoSpaceError):  # a cache that cannot be written is only slower
        pass


def cached_json(kind: str, key: Any, compute: Callable[[], Any], keep: Callable[[Any], bool] | None = None) -> Any:
    """compute()'s JSON-able result, from the cache when an entry for exactly this key exists. `keep`: whether a
    value is worth keeping (a timing taken while other work held the machine is not: the next call times again)."""
    stored = stored_json(kind, key)
    if stored is not None and (keep is None or keep(stored)):
        return stored
    value = compute()
    if keep is None or keep(value):
        store_json(kind, key, value)
    return value
