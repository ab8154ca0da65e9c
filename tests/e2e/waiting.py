"""Waiting on processes a test started: a condition polled until a deadline, whether a pid still runs, and a
hold on a training job's progress (Feed)."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def wait_for(predicate: Callable[[], bool], timeout: float, every: float = 0.05) -> bool:
    """True as soon as predicate() is; False once `timeout` seconds passed without it."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(every)
    return False


def alive(pid: int) -> bool:
    """A process that exists and is no zombie (a killed child its parent has not reaped yet is gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.is_file() and "Z" not in stat.read_text().split(")")[1][:3]


class Feed:
    """A job's seen file (TUNELAB_DEBUG_SEEN_DIR/seen.rank0.jsonl: train/loop_hooks.record_seen) as a FIFO of one
    page that the test reads without blocking, keeping a copy. The trainer writes a record before each step and blocks
    while the pipe is full, so while the test does not read, it gets at most a page of records past the last one
    read (the other ranks of a distributed run no further than the step they wait for rank 0 in): a hold on its
    progress that no clock enters. Open it before the job starts (the job's open then does not wait)."""

    def __init__(self, path: Path) -> None:
        self.path, self.data = path, b""
        os.mkfifo(path)
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.size = fcntl.fcntl(self.fd, fcntl.F_SETPIPE_SZ, 4096)  # the kernel's smallest pipe: one page

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.data.split(b"\n")[:-1]]

    def drain(self) -> int:
        """Read all there is (the writer may go on); the last step read (0: none yet)."""
        while True:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:  # a writer has it open, nothing written
                break
            if not chunk:  # no writer at the moment
                break
            self.data += chunk
        return max((r["step"] for r in self.records()), default=0)

    def held_before(self, step: int) -> bool:
        """Whether the pipe holds less than the records after the last one read (the next perhaps begun) up to
        `step`'s own: then the writer has not begun `step`, nor can it before the test reads again."""
        records = self.records()
        last = max(r["step"] for r in records)
        return (step - last - 1) * min(len(json.dumps(r)) + 1 for r in records) > self.size

    def drain_until_exit(self, proc: subprocess.Popen, timeout: float) -> bool:
        """Read on while `proc` runs (the job goes on as the test reads, to its next step's end, where it saves and
        stops): True once it has exited, False after `timeout` seconds without that."""

        def ended() -> bool:
            self.drain()
            return proc.poll() is not None

        return wait_for(ended, timeout)

    def close(self) -> None:
        """The FIFO replaced by a regular file of what was read (a later job appends to it)."""
        self.drain()
        os.close(self.fd)
        self.path.unlink()
        self.path.write_bytes(self.data)
