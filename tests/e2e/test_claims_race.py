"""Two real coordinators race on one experiment: each run is started exactly once (execute/claims.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tunelab.rundir.experiment import training_state
from tunelab.scaffold.write import scaffold

pytestmark = pytest.mark.slow

# Stands in for training (job.sh is the user's to edit): records who started it, takes a moment, completes.
FAKE_JOB = """#!/usr/bin/env bash
set -eu
cd "$(dirname "$0")"
echo "$PPID" >> starts.log
sleep 3
printf '{"state": "completed", "attempt": 1}' > status.json
printf '{"state": "completed", "steps": 1}' > summary.json
"""


def test_two_coordinators_start_each_run_once(write_spec):
    spec = write_spec(factors={"lora_rank": [4, 8]}, controls=False)
    plan = scaffold(spec)
    for cfg in plan.runs:
        (cfg.run_dir / "job.sh").write_text(FAKE_JOB)
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    procs = [subprocess.Popen([sys.executable, "-m", "tunelab", "run", str(spec.parent)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for cfg in plan.runs:
        starts = (cfg.run_dir / "starts.log").read_text().split()
        assert len(starts) == 1, (cfg.name, starts, outs)  # started once, by one coordinator
        assert training_state(cfg.run_dir) == "completed"
        assert not (cfg.run_dir / ".claim").exists()  # released when the run ended
    assert [p.returncode for p in procs] == [0, 0], outs
