"""benchmarks/plan_ab.py in its smoke form, as a user runs it: two trees of the same revision plan alike from one
calibration, and a tree whose evaluator costs 1 ms more per sample plans each run's evaluation that much longer —
the comparison names the fields and exits 1. One calibration run (a real training job) serves both comparisons."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "plan_ab.py"
EVALTIME = "src/tunelab/forecast/evaltime.py"
CONSTANT = "BATCHED_SAMPLE_OVERHEAD_S = 0.001"


def head_tree(to: Path) -> Path:
    to.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(to)], input=archive, check=True)
    return to


def plan_ab(out: Path, after: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--before", "HEAD", "--after", str(after),
                           "--out", str(out)], capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.slow
@pytest.mark.rehearsal  # one calibration job, four plans in processes of their own (~80 s): outside make test
def test_plan_ab_smoke_same_tree_plans_alike_and_a_changed_constant_is_named(tmp_path):
    same = head_tree(tmp_path / "same")
    changed = head_tree(tmp_path / "changed")
    source = (changed / EVALTIME).read_text()
    assert CONSTANT in source, "the evaluator's per-sample cost moved: point this test at it"
    (changed / EVALTIME).write_text(source.replace(CONSTANT, "BATCHED_SAMPLE_OVERHEAD_S = 0.002"))
    out = tmp_path / "out"

    alike = plan_ab(out, same)
    assert alike.returncode == 0, alike.stdout + alike.stderr
    assert re.search(r"^held-out: \d+ runs planned, identical$", alike.stdout, re.M), alike.stdout
    assert alike.stdout.rstrip().endswith(f"plans of HEAD and {same} from the same measurements: the same")

    differ = plan_ab(out, changed)  # the calibration measured once: the same history as above
    assert differ.returncode == 1, differ.stdout + differ.stderr
    assert "calibration" not in differ.stdout
    assert re.search(r"^held-out: \d+ runs planned, \d+ fields differ$", differ.stdout, re.M), differ.stdout
    assert "/eval" in differ.stdout  # a differing field named: one of an evaluation's
    spec_dir = out / "held-out"
    before = json.loads((spec_dir / "plan-HEAD.json").read_text())["forecast"]["runs"]
    after = json.loads((spec_dir / f"plan-{str(changed).replace('/', '_')}.json").read_text())["forecast"]["runs"]
    assert before and len(before) == len(after)
    for b, a in zip(before, after):  # each run's evaluation: its samples x the extra millisecond, nothing else
        assert a["eval_s"] - b["eval_s"] == pytest.approx(b["eval_samples"] * 0.001, abs=2e-3)
        assert a["train_s"] == b["train_s"]
