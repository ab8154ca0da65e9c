"""Two Slurm coordinators (`tunelab run` twice at once) on one experiment submit each run's jobs once:
the experiment lock (execute/claims.py) makes refresh, retries and submission one coordinator's at a time."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tunelab.execute.status import cancel
from tunelab.ledger import store as ledger
from tunelab.scaffold.write import scaffold

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]
SLURM = {"executor": "slurm", "gpus_per_run": 0,
         "slurm": {"time_limit": "15", "submit_delay_s": 0.5, "poll_interval_s": 1}}


def test_two_coordinators_submit_each_run_once(write_spec):
    spec = write_spec(factors={"lora_rank": [4, 8, 16]}, controls=False, resources=SLURM)
    exp = spec.parent
    runs = [cfg.name for cfg in scaffold(spec).runs]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    procs = [subprocess.Popen([sys.executable, "-m", "tunelab", "run", str(exp)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    try:
        outs = [p.communicate(timeout=300)[0] for p in procs]
        jobs = ledger.query(exp, "SELECT run, kind, job_id FROM jobs ORDER BY id")
        for run in runs:
            kinds = sorted(j["kind"] for j in jobs if j["run"] == run)
            assert kinds == ["eval", "train"], (run, jobs, outs)  # one train and one eval job, not two of each
        assert [p.returncode for p in procs] == [0, 0], outs
        assert any("nothing to submit" in o for o in outs), outs
    finally:
        cancel(exp)
