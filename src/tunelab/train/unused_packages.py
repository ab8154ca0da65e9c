"""Installed packages a training job never uses, marked absent before its stack is imported, so it neither imports them
nor holds their memory: the libraries import some optional packages only because they are installed, at a cost in every
job start: wandb via TRL (the job reports to no tracker), scipy via transformers' loss registry (a causal LM's loss
never uses it), boto3 via accelerate's SageMaker commands.

A module marked absent answers None to importlib.util.find_spec (how transformers asks) and raises ImportError on
import. Only the job processes' entry points call this: the planning process keeps every package."""

from __future__ import annotations

import sys

UNUSED_PACKAGES = ("wandb", "scipy", "boto3", "botocore")


def skip_unused_packages() -> None:
    """Mark the packages the job never uses as not importable in this process (already imported: kept)."""
    for name in UNUSED_PACKAGES:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
