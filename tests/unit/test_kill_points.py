"""Kill points (tunelab.faults) really SIGKILL the process at the chosen hit, say so first, and cost
nothing when unarmed; the fault benchmark (benchmarks/faults.py) relies on all three."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tunelab.faults import parse_targets

PROGRAM = ("from tunelab.faults import kill_point\n"
           "for i in range(1, 6):\n"
           "    kill_point('write', f'run/file{i % 2}.json')\n"
           "    print(i, flush=True)\n")


def _run(tmp_path, kill: str | None):
    fired = tmp_path / "fired.txt"
    env = {**os.environ, "TUNELAB_FAULT_FIRED": str(fired)}
    env.pop("TUNELAB_FAULT_KILL", None)
    if kill is not None:
        env["TUNELAB_FAULT_KILL"] = kill
    proc = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, timeout=60)
    return proc, fired.read_text() if fired.exists() else ""


def test_parse_targets():
    assert parse_targets("") == {}
    assert parse_targets("train.step:7, ledger.ingest#2") == {"train.step:7": 1, "ledger.ingest": 2}


@pytest.mark.parametrize("kill,last_printed,point", [
    ("write", 0, "write"),                       # the first hit of the name
    ("write#3", 2, "write"),                     # the third hit
    ("write:run/file1.json#2", 2, "write:run/file1.json"),  # the second hit of that label (i = 3)
    ("write:run/file0.json", 1, "write:run/file0.json"),    # label of i = 2
])
def test_the_process_is_killed_at_the_chosen_hit(tmp_path, kill, last_printed, point):
    proc, fired = _run(tmp_path, kill)
    assert proc.returncode == -signal.SIGKILL
    assert proc.stdout.split() == [str(i) for i in range(1, last_printed + 1)]
    assert fired.split()[0] == point and fired.split()[1].isdigit()


@pytest.mark.parametrize("kill", [None, "write:other.json", "write#9"])
def test_unarmed_or_unreached_points_do_nothing(tmp_path, kill):
    proc, fired = _run(tmp_path, kill)
    assert proc.returncode == 0 and proc.stdout.split() == ["1", "2", "3", "4", "5"] and fired == ""
