"""An experiment directory moved or copied between `tunelab scaffold` and `tunelab run` trains where it is now
(issue 55): its checkpoints, status and summary land in the new directory, and nothing is written into the old
one. And a job that exits 0 without writing status.json is reported as exactly that, not "FAILED with exit code 0".
The same on Slurm: tests/e2e/slurm/test_slurm_moved.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.execute.status import status_rows
from tunelab.fsutil import read_json
from tunelab.ledger import store as ledger
from tunelab.scaffold.write import scaffold

pytestmark = pytest.mark.slow

TINY = {"factors": {"lora_rank": [4]}, "controls": False,
        "training": {"epochs": 1, "max_steps": 4, "logging_steps": 1}}


def tree(root: Path) -> list[tuple[str, int, int]]:
    """Every file and directory under root with its size and mtime: what a write anywhere in it changes."""
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


def tunelab_run(exp: Path) -> subprocess.CompletedProcess:
    """`tunelab run exp`, its console 200 columns wide (a progress line is cut at the console's width)."""
    return subprocess.run([sys.executable, "-m", "tunelab", "run", str(exp)], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, COLUMNS="200"))


def trained_here(exp: Path) -> None:
    """The run's outputs are in `exp`, and every path the ledger holds of it names `exp`."""
    run = exp / "runs" / "tiny_r4"
    assert read_json(run / "status.json")["state"] == "completed"
    assert read_json(run / "summary.json")["steps"] == 4
    assert (run / "checkpoints" / "epoch_0" / "adapter_model.safetensors").is_file()
    assert [(r.name, r.state) for r in status_rows(exp)] == [("tiny_r4", "completed")]
    assert ledger.query(exp, "SELECT run_dir FROM runs") == [{"run_dir": str(run)}]


def test_a_moved_experiment_trains_where_it_is_now(write_spec, tmp_path):
    old = scaffold(write_spec(**TINY)).experiment_dir
    new = tmp_path / "scratch" / "exp"
    new.parent.mkdir()
    shutil.move(old, new)
    res = tunelab_run(new)
    assert res.returncode == 0, res.stdout + res.stderr
    trained_here(new)
    assert not old.exists()  # nothing made the old place again


def test_a_copied_experiment_trains_in_the_copy_and_leaves_the_original_untouched(write_spec, tmp_path):
    original = scaffold(write_spec(**TINY)).experiment_dir
    copy = tmp_path / "exp-early"
    shutil.copytree(original, copy)
    before = tree(original)
    res = tunelab_run(copy)
    assert res.returncode == 0, res.stdout + res.stderr
    trained_here(copy)
    assert tree(original) == before  # not a file written, added or touched in the original
    assert not (original / "runs" / "tiny_r4" / "status.json").exists()


def test_a_job_that_exits_0_without_writing_status_is_reported_as_that(write_spec):
    cfg = scaffold(write_spec(**TINY)).runs[0]
    (cfg.run_dir / "job.sh").write_text("#!/usr/bin/env bash\nexit 0\n")  # job.sh is the user's to edit
    res = tunelab_run(cfg.run_dir.parent.parent)
    said = " ".join((res.stdout + res.stderr).split())  # (the console may wrap a long line)
    assert res.returncode == 1, said
    assert "tiny_r4: failed (exited 0 without writing status.json)" in said  # the progress line
    verdict = ("exited 0 without writing status.json; failed: not retried automatically (exited 0 without writing "
               "status.json)")  # the job's verdict, then the retry policy's decision
    assert f"tiny_r4 FAILED: {verdict}" in said
    assert "exit code 0" not in said
    (job,) = ledger.query(cfg.run_dir.parent.parent, "SELECT failure, detail, exit_code FROM jobs")
    assert job == {"failure": "failed", "detail": verdict, "exit_code": "0:0"}
