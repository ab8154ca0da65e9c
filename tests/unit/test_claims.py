"""Run claims and the experiment lock (execute/claims.py): exclusive, released, stale ones taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from tunelab.execute import claims


@pytest.fixture(autouse=True)
def _drop_held():
    yield
    claims.release_all()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _foreign_claim(run_dir, age_s: float = 0.0, **info):
    path = run_dir / claims.CLAIM_FILE
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), **info}))
    then = time.time() - age_s
    os.utime(path, (then, then))


def test_claim_is_exclusive_and_released(tmp_path):
    assert claims.claim(tmp_path) is None
    assert json.loads((tmp_path / claims.CLAIM_FILE).read_text())["pid"] == os.getpid()
    assert claims.claim(tmp_path) is None  # ours already
    claims.release(tmp_path)
    assert not (tmp_path / claims.CLAIM_FILE).exists()


def test_live_claim_of_another_process_is_respected(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        _foreign_claim(tmp_path, pid=holder.pid)
        assert f"pid {holder.pid}" in claims.claim(tmp_path)
        claims.release(tmp_path)  # not ours: left alone
        assert (tmp_path / claims.CLAIM_FILE).exists()
    finally:
        holder.kill()
        holder.wait()


def test_stale_claims_are_taken_over(tmp_path):
    for i, info, age in [(0, {"pid": _dead_pid()}, 0),                        # dead pid on this host
                         (1, {"pid": os.getpid(), "start": "1"}, 0),          # pid reused by another process
                         (2, {"host": "node-elsewhere", "pid": 1}, claims.STALE_AFTER_S + 60)]:  # silent host
        d = tmp_path / str(i)
        d.mkdir()
        _foreign_claim(d, age, **info)
        assert claims.claim(d) is None, info
        assert json.loads((d / claims.CLAIM_FILE).read_text())["token"]


def test_fresh_claim_from_another_host_is_respected(tmp_path):
    _foreign_claim(tmp_path, 30, host="node-elsewhere", pid=1)
    assert "node-elsewhere" in claims.claim(tmp_path)


def test_claims_are_released_when_the_process_exits(tmp_path):
    code = f"from tunelab.execute import claims; assert claims.claim({str(tmp_path)!r}) is None"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert not (tmp_path / claims.CLAIM_FILE).exists()


def test_experiment_lock_excludes_another_process(tmp_path):
    """Another process holds the lock until told to let go: meanwhile a try without waiting is refused and a
    waiting taker stays blocked; it gets the lock only after the holder was told to let go (the order of events,
    no timing)."""
    import threading

    code = ("import sys; from tunelab.execute import claims\n"
            f"with claims.experiment_lock({str(tmp_path)!r}):\n    print('in', flush=True); sys.stdin.readline()\n")
    other = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    events: list[str] = []
    try:
        assert other.stdout.readline().strip() == "in"
        with claims.experiment_lock(tmp_path, wait=False) as got:
            assert got is False  # held by the other process: refused at once

        def take() -> None:
            with claims.experiment_lock(tmp_path) as got:
                events.append(f"taken {got}")

        taker = threading.Thread(target=take, daemon=True)
        taker.start()
        taker.join(0.5)  # a lock that did not exclude would be taken by now on any machine not stalled
        assert taker.is_alive() and events == []
        events.append("let go")
        other.stdin.write("\n")
        other.stdin.flush()
        taker.join(60)  # only a guard against hanging
        assert not taker.is_alive() and events == ["let go", "taken True"]
    finally:
        other.kill()
        other.wait()
