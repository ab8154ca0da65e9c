"""CPU hogs beside a benchmark's runs: the contention a shared node's other work puts on them, made on purpose.

`hogs(n)` starts n processes, each a pure-Python busy loop (one thread: one core's worth of work), and stops
them when the block ends, on an error or Ctrl-C too. A hog is bounded on its own as well: it exits when the
process that started it is gone (a benchmark killed outright runs no `finally`) and after `max_s` seconds.

Each hog is started by a go-between that exits at once, in a session of its own, so it is not in the benchmark's
process tree: a plan made in the benchmark's process counts its own tree as its own work (host/cpuload.py), which
a child hog would be — it would then see no contention at all. (Linux: a hog watches /proc for its starter.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MAX_S = 3600.0  # a hog never outlives this, whatever happens to its parent
LOOP = """import sys, time
starter, end = sys.argv[1], time.monotonic() + float(sys.argv[2])
def alive():
    try:
        with open(f"/proc/{starter}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False
while alive() and time.monotonic() < end:
    for _ in range(200_000):
        pass
"""
SPAWN = ("import subprocess, sys\n"
         "p = subprocess.Popen([sys.executable, '-c', sys.argv[1], sys.argv[2], sys.argv[3]], start_new_session=True, "
         "stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\nprint(p.pid)\n")


def _state(pid: int) -> str | None:
    """The process's state letter (R, S, Z, ...); None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


class Hog:
    """One busy loop outside the benchmark's tree, by pid (not a child: it cannot be waited for, only watched)."""

    def __init__(self, pid: int):
        self.pid = pid

    def poll(self) -> int | None:
        """None while it spins; 0 once it is gone (or a zombie awaiting its reaper)."""
        return None if _state(self.pid) not in (None, "Z", "X") else 0

    @property
    def returncode(self) -> int | None:
        return self.poll()

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float | None = None) -> int:
        end = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if end is not None and time.monotonic() > end:
                raise subprocess.TimeoutExpired(f"hog {self.pid}", timeout or 0.0)
            time.sleep(0.02)
        return 0


def start_hog(max_s: float = MAX_S) -> Hog:
    """One hog, re-parented away from this process by a go-between; it stops when this process is gone."""
    out = subprocess.run([sys.executable, "-c", SPAWN, LOOP, str(os.getpid()), str(max_s)], capture_output=True,
                         text=True, check=True, stdin=subprocess.DEVNULL).stdout
    return Hog(int(out))


@contextmanager
def hogs(n: int, max_s: float = MAX_S) -> Iterator[list[Hog]]:
    """n busy processes while the block runs (n = 0: none); all killed when it ends."""
    procs: list[Hog] = []
    try:
        for _ in range(n):
            procs.append(start_hog(max_s))
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait(timeout=10)
