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

