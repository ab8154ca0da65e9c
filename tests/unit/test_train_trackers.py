"""The training job marks the W&B SDK absent (train/trackers.py): TRL would import it at import time only to
link a model card, and the job reports to no tracker. Checked in a fresh interpreter, as a job starts."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

CHECK = """
import importlib.util, sys
before = importlib.util.find_spec("wandb") is not None
from tunelab.train.trackers import skip_unused_tracker_sdks
skip_unused_tracker_sdks()
# transformers' is_wandb_available() is `find_spec("wandb") is not None` and a wandb attribute check
after = importlib.util.find_spec("wandb") is not None
try:
    import wandb
    imported = True
except ImportError:
    imported = False
print(before, after, imported)
"""


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="the W&B SDK is not installed here")
def test_a_job_process_sees_wandb_as_absent():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "False", "False"]


def test_the_job_entry_points_skip_it_before_training():
    """Both processes that train (a run's job and the probe's steps) call it at the top of main, before TRL."""
    import inspect

    from tunelab.train import job, probe_steps

    for main in (job.main, probe_steps.main):
        source = inspect.getsource(main)
        assert "skip_unused_tracker_sdks()" in source.split("try:")[0], main.__module__
