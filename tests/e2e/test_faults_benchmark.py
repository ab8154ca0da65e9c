"""The fault benchmark in its CI form: a real `tunelab run` whose training job is SIGKILLed while it
writes a checkpoint's token counters and whose coordinator is SIGKILLed inside its ledger transaction,
then `tunelab run` again; the sweep must end equal to an uninterrupted run (every step once, same
counters and losses, identical adapters, ledger and history without duplicate or missing rows, report
in agreement). The full form (20 kills, eval and report too) is
`python benchmarks/faults.py`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import faults  # noqa: E402

pytestmark = pytest.mark.slow


def test_short_fault_run_survives_every_kill(tmp_path, capsys):
    code = faults.main(["--short", "--seed", "0", "--out", str(tmp_path)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "faults survived: 2/2", "\n".join(lines)
    assert code == 0
    kills = [line for line in lines if line.startswith("fault ")]
    assert len(kills) == 2 and all(line.endswith(": survived") for line in kills)
    assert any("write:checkpoint-" in line and "tunelab_counters.json" in line for line in kills)
    assert any("ledger.ingest:" in line for line in kills)


def test_report_kill_points_are_planned_where_the_report_command_reaches_them(finished_sweep, tmp_path):
    """The full form once planned a kill in report.md's write after a killed build had published report.md: the
    rebuild left the unchanged file alone, so no kill happened (a fault that was never tried). On a finished sweep
    whose report exists, `tunelab report` really does not reach report.md's write, does reach a figure's, and
    the planner offers only the figure; with no report there, it offers all three and the write is reached."""
    import os
    import shutil
    import subprocess

    exp = tmp_path / "exp"
    shutil.copytree(finished_sweep.exp, exp)
    report_dir = exp / "report"

    def fired(point: str) -> tuple[int, str]:
        log = tmp_path / "fired.txt"
        log.unlink(missing_ok=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TUNELAB_FAULT_KILL": point, "TUNELAB_FAULT_FIRED": str(log)}
        code = subprocess.run([sys.executable, "-m", "tunelab", "report", str(exp)], env=env,
                              capture_output=True).returncode
        return code, log.read_text() if log.is_file() else ""

    assert faults.reachable_report_kinds(report_dir) == ["figure"]
    assert fired("") == (0, "")  # the copy's report built where it now is (its text names the directory)
    assert fired("write:report/report.md") == (0, "")  # built again, report.md unchanged: never written
    code, text = fired("report.figure#1")
    assert code == -9 and text.startswith("report.figure ")
    (report_dir / "report.md").unlink()
    (report_dir / "report.html").unlink()
    assert faults.reachable_report_kinds(report_dir) == list(faults.REPORT_KINDS)
    code, text = fired("write:report/report.md")
    assert code == -9 and text.startswith("write:report/report.md ")
