"""Installed packages a training job never uses, marked absent before its stack is imported, so that it neither
imports them nor holds their memory.

Why: the libraries import some optional packages at import time only because they are installed, and each one
costs every job start CPU and resident memory (measured in a fresh interpreter after torch: benchmarks/peers.py's
tiny job holds ~100 MiB more than torchtune's, all of it imports):
- wandb: TRL's base trainer imports it to link a model card (~1.5 s of CPU). The job reports to no tracker
  (TrainingArguments get report_to="none", train/trainer.py); `tunelab export` sends finished runs afterwards.
- scipy: transformers' loss registry imports it for the object-detection losses (+39 MiB, ~0.3 s). A causal LM's
  loss never uses it; tunelab's statistics (tunelab.stats) run in the planning and reporting process, not here.
- boto3 (and botocore): accelerate's config commands import it for SageMaker (+10 MiB, ~0.1 s).
A module marked absent answers None to importlib.util.find_spec, which is how transformers and accelerate ask
whether it is installed, and raises ImportError on import. Only the job processes' entry points call this, never
a library import: the planning process keeps every package."""

from __future__ import annotations

import sys

UNUSED_PACKAGES = ("wandb", "scipy", "boto3", "botocore")


def skip_unused_packages() -> None:
    """Mark the packages the job never uses as not importable in this process (already imported: kept)."""
    for name in UNUSED_PACKAGES:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
