"""The training job reports to no experiment tracker: TrainingArguments get report_to="none" (train/trainer.py),
tunelab writes metrics.jsonl itself, and `tunelab export` sends finished runs to MLflow or W&B afterwards.
TRL still imports the W&B SDK at import time whenever it is installed (trl.trainer.base_trainer, for a model
card's link), which costs every job start about 1.5 s of CPU. A job process marks it absent first (transformers'
is_wandb_available() then answers False), so only the process entry points call this, never a library import."""

from __future__ import annotations

import sys

UNUSED_SDKS = ("wandb",)


def skip_unused_tracker_sdks() -> None:
    """Mark the tracker SDKs the job never uses as not importable in this process (already imported: kept)."""
    for name in UNUSED_SDKS:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
