"""benchmarks/ray_demo.py --smoke on the suite's two-node Ray cluster: one run here and on Ray, the plan's makespan
and the one-run overhead printed, the same accuracy on both. A rehearsal (minutes): `make test-rehearsals`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "benchmarks"
NUM = r"([-+]?\d+(?:\.\d+)?)"


@pytest.mark.slow
@pytest.mark.rehearsal  # a sweep here and on Ray, then one run on each: `make test-rehearsals`, outside make test
def test_the_ray_demo_smoke_gives_the_local_accuracies_and_its_figures(ray_cluster, tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / "ray_demo.py"), "--smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=1200, check=False)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert re.search(r"^accuracies: the same \(\{'tiny-2x128_r4': " + NUM, out, re.M), out[-2000:]
    predicted, measured = map(float, re.search(rf"^makespan: predicted {NUM} s .*, measured {NUM} s", out,
                                               re.M).groups())
    assert predicted > 0 and measured > 0
    line = re.search(rf"^one run alone: local {NUM} s, Ray {NUM} s; Ray - local by phase: (.*)$", out, re.M)
    local, ray = map(float, line.groups()[:2])
    overhead = float(re.search(rf"^overhead per run on Ray beyond local: median {NUM} s over 1", out, re.M).group(1))
    assert overhead == pytest.approx(ray - local, abs=0.051)  # printed to 0.1 s
    by_phase = dict(re.findall(rf"([a-z ]+) {NUM}(?:, |$)", line.group(3)))
    assert list(by_phase) == ["to submission", "dispatch", "training", "after training"]  # each with its figure
