"""A real single-node Slurm cluster for tests marked `slurm`, started once per session with
scripts/slurm-dev-cluster (which installs the Debian packages when missing: CI is a fresh Debian
machine running as root). A cluster that already answers is used as it is and left running;
one started here is stopped at the end (the script stops only the daemons it started)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "scripts" / "slurm-dev-cluster"


def _cluster_answers() -> bool:
    if shutil.which("scontrol") is None or shutil.which("sinfo") is None:
        return False
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    if ping.returncode != 0 or "UP" not in ping.stdout:
        return False
    node = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout
    return any(s.strip().rstrip("*") in ("idle", "mixed", "allocated") for s in node.splitlines())


@pytest.fixture(scope="session")
def slurm_cluster():
    if _cluster_answers():
        yield "existing"
        return
    if os.geteuid() != 0:
        pytest.fail("the slurm tests start a local cluster and need root (or a running cluster)")
    env = dict(os.environ, CPUS_OVERRIDE=os.environ.get("CPUS_OVERRIDE", "8"))
    proc = subprocess.run([str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        subprocess.run([str(SCRIPT), "stop"], capture_output=True, text=True)
        pytest.fail(f"scripts/slurm-dev-cluster start failed:\n{proc.stdout}\n{proc.stderr}")
    try:
        yield "started"
    finally:
        subprocess.run([str(SCRIPT), "stop"], capture_output=True, text=True, timeout=300)
