"""`tunelab tune` with two combinations and two CPU shares, for real: the combinations are searched side by side,
each trial's job pinned to its lane's share (summary.json's threads name it), the two lanes' shares apart, every
trial forked from the one warm process (started before the plan, its imports beside the plan's reading), and
each combination's rate chosen, as a search one at a time chooses them."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tunelab.fsutil import read_json
from tunelab.host.cores import parse_cpus, usable_cores

pytestmark = pytest.mark.slow

TUNE = {"learning_rate": {"low": 1.0e-4, "high": 3.0e-2, "log": True}, "trials": 1, "budget": 0.25}
TRAINING = {"validation_every_steps": 5, "logging_steps": 5}


def test_two_combinations_are_searched_side_by_side_on_their_own_shares(tmp_path, spec_in):
    if usable_cores().count < 2:
        pytest.skip("one core: one lane")
    spec = spec_in(tmp_path / "exp", factors={"lora_rank": [4, 8]}, controls=False, training=TRAINING, tune=TUNE,
                   resources={"cpu_runs_at_once": 2})
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}  # tunelab's rule
    out = subprocess.run([sys.executable, "-m", "tunelab", "tune", str(spec.parent)], capture_output=True, text=True,
                         timeout=600, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    shares: dict[str, set[str]] = {}
    parents: set[str] = set()
    for combo in ("lora_rank-4", "lora_rank-8"):
        for trial in sorted((spec.parent / "tune" / combo).glob("trial-*")):
            parents |= set(re.findall(r"started warm: forked from process (\d+)", (trial / "train.log").read_text()))
            source = read_json(trial / "summary.json")["threads"]["source"]
            assert source.startswith("TUNELAB_CPUS="), source  # pinned to a lane's share
            shares.setdefault(combo, set()).add(source.split()[0].removeprefix("TUNELAB_CPUS="))
    # the two combinations' trials ran on two lanes of disjoint CPUs
    assert [len(s) for s in shares.values()] == [1, 1]
    (a,), (b,) = shares.values()
    assert not set(parse_cpus(a)) & set(parse_cpus(b))
    assert len(parents) == 1  # both lanes' trials forked from the one warm process started ahead of the plan
    best = read_json(spec.parent / "tune" / "best.json")
    assert sorted(best) == ["lora_rank-4", "lora_rank-8"]
