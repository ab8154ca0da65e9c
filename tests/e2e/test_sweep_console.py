"""What the person at the terminal sees of a finished CPU sweep, the demo's kind (the shared finished_sweep,
trained through the CLI): `tunelab run`'s progress view ends with every completed run's bar at the step it
ended at, and `tunelab eval` in a process of its own (the console as a person has it, stderr included, no
pytest between the warnings and the terminal) prints no library warning with a path into site-packages."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from tunelab.fsutil import read_json

pytestmark = pytest.mark.slow


def test_run_progress_view_ends_with_each_completed_run_at_its_last_step(finished_sweep):
    lines = finished_sweep.output["run"].splitlines()
    for run in finished_sweep.runs:
        steps = read_json(finished_sweep.exp / "runs" / run / "summary.json")["steps"]
        line = next((x for x in lines if re.search(rf"\b{run}: completed\b", x)), None)
        assert line is not None, finished_sweep.output["run"]
        assert re.search(rf"\b{steps}/{steps}\b", line), line  # not the last logged step before it ended


def test_eval_console_shows_no_library_warning(finished_sweep, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(finished_sweep.exp, exp, symlinks=True)  # eval writes into the experiment
    args = [sys.executable, "-m", "tunelab", "eval", str(exp), "--epochs", "last", "--force"]
    for run in finished_sweep.runs:  # two adapters of one base: one pass, PEFT wraps the base model
        args += ["--run", run]
    # its evaluation of the copy is the shared sweep's runs evaluated again: kept out of the session's history
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TUNELAB_HISTORY": str(tmp_path / "history.db")}
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    console = done.stdout + done.stderr
    assert done.returncode == 0, console[-3000:]
    for run in finished_sweep.runs:  # each run's score printed: the console of a real evaluation
        assert re.search(rf"\b{run} epoch_{finished_sweep.epochs - 1} .*samples\)", console), console
    assert "Warning" not in console and "site-packages" not in console, console
