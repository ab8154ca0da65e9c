"""A full disk while `tunelab eval` writes, on a real small filesystem the test mounts (tests/smallfs.py): one line,
nothing half-written, and after space is freed the same scores as the finished sweep's. Apart from
test_disk_full.py so that the training test there stays a unit of its own under xdist (this one shares the
finished sweep's worker)."""

from __future__ import annotations

import pytest
from smallfs import fill, small_filesystem

pytestmark = pytest.mark.slow


def test_full_disk_in_an_evaluation_pass_stops_with_one_line_and_resumes_equal(tmp_path, request, finished_sweep):
    """`tunelab eval` of two checkpoints in one pass, on a copy of the finished sweep on a real small filesystem
    with a few KiB left: it stops with one line naming where the logs go, leaves no scores.json and no staging
    directory; once space is freed the same command scores both checkpoints exactly as the sweep scored them."""
    import os
    import shutil
    import subprocess
    import sys

    from tunelab.evaluate.scores import read_task_scores

    mnt = small_filesystem(tmp_path, request, 24 * 1024)
    exp = mnt / "exp"
    shutil.copytree(finished_sweep.exp, exp, ignore=shutil.ignore_patterns("trainer_state", "eval", "report"))
    filler = fill(mnt, 8 * 1024)
    command = [sys.executable, "-m", "tunelab", "eval", str(exp), "--run", "tiny_r4", "--epochs", "2,3"]
    # its evaluation of the copy is the shared sweep's run evaluated again: kept out of the session's history
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TUNELAB_HISTORY": str(tmp_path / "history.db")}
    full = subprocess.run(command, env=env, capture_output=True, text=True)
    errors = [line for line in full.stderr.splitlines() + full.stdout.splitlines() if line.startswith("error:")]
    assert full.returncode == 1 and len(errors) == 1, full.stdout + full.stderr
    assert errors[0].startswith(f"error: no space left on {exp}") and "free" in errors[0] and "Traceback" not in full.stderr
    assert not list(exp.rglob("scores.json")) and not list(exp.glob(".tunelab-eval-pass-*"))
    filler.unlink()
    again = subprocess.run(command, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout + again.stderr
    for epoch in (2, 3):
        now = read_task_scores(exp / "runs" / "tiny_r4" / "eval" / f"epoch_{epoch}" / "exact_match" / "scores.json")
        then = read_task_scores(finished_sweep.exp / "runs" / "tiny_r4" / "eval" / f"epoch_{epoch}" / "exact_match"
                                / "scores.json")
        assert [s.value for s in now.per_sample] == [s.value for s in then.per_sample]
        assert [s.prediction for s in now.per_sample] == [s.prediction for s in then.per_sample]
