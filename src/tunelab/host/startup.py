"""A heavy process's start: the libraries it is about to use imported with the garbage collector off, then frozen.

Importing torch, transformers and their kin creates a million long-lived objects and next to no garbage, and that growth
sets off full collections that walk every object imported so far, again and again (docs/benchmarks.md). After the
imports the objects are frozen (`gc.freeze`) and collection resumes. Modules already imported are not imported again and
nothing is frozen then, so a long-lived process keeps its collector as it is."""

from __future__ import annotations

import gc
import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager

UNUSED_PACKAGES = ("wandb", "scipy", "boto3", "botocore")


def skip_unused_packages() -> None:
    """Mark the packages the job never uses as not importable in this process (already imported: kept)."""
    for name in UNUSED_PACKAGES:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


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


def import_stack(*modules: str) -> None:
    """Import these modules (those not imported yet) with the collector paused, then freeze what exists."""
    missing = [m for m in modules if m not in sys.modules]
    if not missing:
        return
    with collector_paused():
        for module in missing:
            importlib.import_module(module)
