"""The local Slurm cluster's lifetime in a test session, shared by every pytest-xdist worker of that session.

Why: the Slurm test files run on several workers at once (so that their waits on the cluster overlap with other
work), and starting a cluster costs tens of seconds. The first worker that needs one starts it, under a file lock
that the others wait on; they then find it answering and use it. A cluster this session started is stopped once,
by the process that ran the session (pytest's controller under xdist, or the only process): it alone knows that
every worker is done. A cluster found running is used as it is and left running."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "slurm-dev-cluster"
SESSION_ENV = "TUNELAB_TEST_SESSION"  # set by the session's first process, inherited by its xdist workers
NODES = 2


def script_env() -> dict[str, str]:
    """The script's settings, the same for every call of a session: another CPUS_OVERRIDE or NODES would rewrite
    the cluster's config (and restart slurmctld) under the tests."""
    return dict(os.environ, CPUS_OVERRIDE=os.environ.get("CPUS_OVERRIDE", "8"), NODES=str(NODES))


def script(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], env=script_env(), capture_output=True, text=True, timeout=timeout)


def answers() -> bool:
    """A controller that answers and a node that can run jobs."""
    if shutil.which("scontrol") is None or shutil.which("sinfo") is None:
        return False
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    if ping.returncode != 0 or "UP" not in ping.stdout:
        return False
    node = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout
    return any(s.strip().rstrip("*") in ("idle", "mixed", "allocated") for s in node.splitlines())


def _started_mark() -> Path:
    """Where this session records that it started the cluster (its existence is the record)."""
    return Path(tempfile.gettempdir()) / f"tunelab-slurm-started-{os.environ.get(SESSION_ENV, os.getpid())}"


@contextmanager
def cluster_lock() -> Iterator[None]:
    """One process of the machine at a time starts or changes the cluster (the script is not safe beside itself)."""
    with open(Path(tempfile.gettempdir()) / "tunelab-slurm-cluster.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_started() -> str:
    """'existing' (found answering) or 'started' (here, recorded for the session's end to stop); raises
    RuntimeError when it cannot start one (not root, or the script's output)."""
    with cluster_lock():
        if answers():
            return "started" if _started_mark().is_file() else "existing"
        if os.geteuid() != 0:
            raise RuntimeError("the slurm tests start a local cluster and need root (or a running cluster)")
        proc = script("start")
        if proc.returncode != 0:
            script("stop", timeout=300)
            raise RuntimeError(f"scripts/slurm-dev-cluster start failed:\n{proc.stdout}\n{proc.stderr}")
        _started_mark().write_text(json.dumps({"pid": os.getpid()}))
        return "started"


def stop_if_started() -> None:
    """At the session's end, in the process that ran it: stop the cluster this session started, if it did."""
    mark = _started_mark()
    if not mark.is_file():
        return
    with cluster_lock():
        script("stop", timeout=300)
        mark.unlink(missing_ok=True)


@contextmanager
def cluster_use(alone: bool) -> Iterator[None]:
    """Held by every Slurm test module while it runs: shared by the modules that only submit jobs, held alone by
    one that stops the cluster's daemons or preempts a node (its faults would land in the others' jobs). A module
    waits for the lock it needs; every other worker goes on with its own tests meanwhile."""
    with open(Path(tempfile.gettempdir()) / "tunelab-slurm-cluster.use", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
