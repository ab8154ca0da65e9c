"""CPU hogs beside a benchmark's runs: the contention a shared node's other work puts on them, made on purpose.

`hogs(n)` starts n processes, each a pure-Python busy loop (one thread: one core's worth of work), and stops
them when the block ends, on an error or Ctrl-C too. A hog is bounded on its own as well: it exits when the
process that started it is gone (a benchmark killed outright runs no `finally`) and after `max_s` seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

MAX_S = 3600.0  # a hog never outlives this, whatever happens to its parent
LOOP = """import os, sys, time
parent, end = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
while os.getppid() == parent and time.monotonic() < end:
    for _ in range(200_000):
        pass
"""


@contextmanager
def hogs(n: int, max_s: float = MAX_S) -> Iterator[list[subprocess.Popen]]:
    """n busy processes while the block runs (n = 0: none); all killed and reaped when it ends."""
    procs: list[subprocess.Popen] = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen([sys.executable, "-c", LOOP, str(os.getpid()), str(max_s)],
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()
