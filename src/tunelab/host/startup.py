"""A heavy process's start: the libraries it is about to use imported with the garbage collector off, then
frozen.

Importing torch, transformers, peft, trl, datasets or inspect-ai creates a million long-lived objects and
next to no garbage. With the collector on, that growth sets off full collections that walk every object
imported so far, again and again: a tiny training job took 12.1 user CPU-seconds on a 2-core machine with
the collector on throughout, 7.5 with it paused while importing (same run, same loss). After the imports the
objects are frozen (`gc.freeze`: later collections skip them) and collection resumes for what the process
itself makes. Modules already imported are not imported again and nothing is frozen then, so a long-lived
process (a notebook, the MCP server, a test session) that calls a command twice keeps its collector as it is.

While they import, the map of installed packages to their distributions (`importlib.metadata.
packages_distributions`: a read of every installed package's file list, 0.29 s of a training job's 2.9 s of imports
in this project's environment of 190 distributions; TRL makes it at import time to check two versions) comes from
tunelab's cache, keyed by the import path's directories and their modification times: installing or removing a
package changes its directory's, and the next process scans again.
"""

from __future__ import annotations

import gc
import importlib
import importlib.metadata
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """The collector off inside; afterwards everything that exists frozen and the collector back as it was."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def _path_stamps() -> list[tuple[str, int]]:
    """(directory, mtime_ns) of every directory on the import path that holds installed distributions (*.dist-info,
    *.egg-info): what a package's install or removal changes. A script's own directory holds none and is left out,
    whatever else is written there."""
    out = []
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
            if any(n.endswith((".dist-info", ".egg-info")) for n in names):
                out.append((os.path.abspath(entry or "."), os.stat(entry or ".").st_mtime_ns))
        except OSError:
            continue
    return out


@contextmanager
def distributions_from_cache() -> Iterator[None]:
    """Inside, `importlib.metadata.packages_distributions()` answers from the cache while the import path's
    directories are unchanged (a scan otherwise, kept); the library's own function again afterwards."""
    from tunelab.diskcache import cached_json

    scan = importlib.metadata.packages_distributions

    def cached() -> dict[str, list[str]]:
        return {k: list(v) for k, v in cached_json("packages-distributions", [sys.executable, _path_stamps()],
                                                   lambda: {k: list(v) for k, v in scan().items()}).items()}

    importlib.metadata.packages_distributions = cached
    try:
        yield
    finally:
        importlib.metadata.packages_distributions = scan


def import_stack(*modules: str) -> None:
    """Import these modules (those not imported yet) with the collector paused and the installed packages' map
    from the cache, then freeze what exists."""
    missing = [m for m in modules if m not in sys.modules]
    if not missing:
        return
    with collector_paused(), distributions_from_cache():
        for module in missing:
            importlib.import_module(module)
