"""The fault benchmark plans a report kill only where `tunelab report` really writes (benchmarks/faults.py
reachable_report_kinds), checked against the real command on the shared finished sweep. Apart from
test_faults_benchmark.py, whose short run is a unit of its own under xdist (this file shares the finished sweep's
worker)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import faults  # noqa: E402

pytestmark = pytest.mark.slow


def test_report_kill_points_are_planned_where_the_report_command_reaches_them(finished_sweep, tmp_path):
    """The full form once planned a kill in report.md's write after a killed build had published report.md: the
    rebuild left the file alone (its text unchanged: the report's "Generated" line changes only by the minute), so
    no kill happened — a fault never tried. Whether a rebuild writes report.md depends on the clock, so the
    planner offers only what `tunelab report` always reaches: on a finished sweep whose report exists, a figure
    (checked: the real command reaches it); with no report there, all three (checked: report.md's write is
    reached)."""
    import os
    import shutil
    import subprocess

    exp = tmp_path / "exp"
    shutil.copytree(finished_sweep.exp, exp)
    report_dir = exp / "report"

    def fired(point: str) -> tuple[int, str]:
        log = tmp_path / "fired.txt"
        log.unlink(missing_ok=True)
        # a history of its own: the report reads the history, which the suite's other tests write meanwhile
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TUNELAB_FAULT_KILL": point, "TUNELAB_FAULT_FIRED": str(log),
               "TUNELAB_HISTORY": str(tmp_path / "history.db")}
        code = subprocess.run([sys.executable, "-m", "tunelab", "report", str(exp)], env=env,
                              capture_output=True).returncode
        return code, log.read_text() if log.is_file() else ""

    assert faults.reachable_report_kinds(report_dir) == ["figure"]
    assert fired("") == (0, "")  # the copy's report built where it now is (its text names the directory)
    code, text = fired("report.figure#1")
    assert code == -9 and text.startswith("report.figure ")
    (report_dir / "report.md").unlink()
    (report_dir / "report.html").unlink()
    assert faults.reachable_report_kinds(report_dir) == list(faults.REPORT_KINDS)
    code, text = fired("write:report/report.md")
    assert code == -9 and text.startswith("write:report/report.md ")
