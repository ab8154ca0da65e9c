"""A `running` status.json written on another host is judged by its age (a heartbeat), not trusted forever."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

from tunelab.rundir.experiment import STALE_AFTER_S, training_state


def _status(run_dir, age_s: float, host: str = "node-elsewhere-17", pid: int = 4242, rows: list | None = None):
    run_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() - age_s))
    (run_dir / "status.json").write_text(json.dumps({"state": "running", "host": host, "pid": pid,
                                                     "step": 10, "updated_at": stamp}))
    if rows is not None:
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    then = time.time() - age_s
    os.utime(run_dir / "status.json", (then, then))


def test_other_host_running_status_goes_stale(tmp_path):
    _status(tmp_path / "fresh", age_s=30)
    assert training_state(tmp_path / "fresh") == "running"  # written 30 s ago: alive
    _status(tmp_path / "old", age_s=STALE_AFTER_S + 3600)
    assert training_state(tmp_path / "old") == "interrupted"  # silent for an hour: the job is gone


def test_stale_threshold_grows_with_a_slow_logging_interval(tmp_path):
    # one log row every 900 s (a big model, or a long validation): 3 x 900 s of silence is still alive
    rows = [{"step": s, "loss": 1.0, "elapsed_s": 900.0 * i} for i, s in enumerate((10, 20, 30), start=1)]
    _status(tmp_path / "slow", age_s=2000, rows=rows)
    assert training_state(tmp_path / "slow") == "running"
    _status(tmp_path / "gone", age_s=2800, rows=rows)
    assert training_state(tmp_path / "gone") == "interrupted"


def test_same_host_uses_the_pid(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _status(tmp_path / "dead", age_s=1, host=socket.gethostname(), pid=dead.pid)
    assert training_state(tmp_path / "dead") == "interrupted"
    _status(tmp_path / "me", age_s=STALE_AFTER_S + 3600, host=socket.gethostname(), pid=os.getpid())
    assert training_state(tmp_path / "me") == "running"  # a live pid here wins over an old file


def test_a_resumed_run_records_its_new_host_with_its_new_pid(tmp_path):
    """host and pid describe the same process: a resume on another node must not keep the old host."""
    import json
    import os
    import socket

    from tunelab.rundir.status import write_status

    (tmp_path / "status.json").write_text(json.dumps({"state": "running", "host": "old-node", "pid": 1}))
    status = write_status(tmp_path, state="running")
    assert (status.host, status.pid) == (socket.gethostname(), os.getpid())
