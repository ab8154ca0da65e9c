"""Claims: one coordinator at a time starts or retries a run, since two jobs in one run dir corrupt its checkpoints.
Imports nothing heavy, so a coordinator claims its runs before torch is loaded.

- The experiment lock (`<experiment>/.tunelab.lock`, flock) is held briefly while claims are taken and jobs submitted.
  The kernel drops it when its process dies, so it is never stale; on NFS it holds across hosts; on a filesystem without
  locks the claim files alone remain, atomic to create but racy to take over.
- A run claim (`<run dir>/.claim`) is created with O_EXCL under the lock and lives until the run ends for good. It is
  stale when its pid is gone on this host, or from another host when untouched for STALE_AFTER_S (the holder touches its
  claims while it waits); a stale claim is taken over under the lock."""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.host.process import alive, proc_start

LOCK_FILE = ".tunelab.lock"
CLAIM_FILE = ".claim"
STALE_AFTER_S = 600.0
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}
_HELD: dict[Path, str] = {}  # claim file -> our token


@contextlib.contextmanager
def experiment_lock(experiment_dir: str | Path, wait: bool = True) -> Iterator[bool]:
    """Hold the experiment's lock for the body (one coordinator at a time); wait=False: False at once if held."""
    path = Path(experiment_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        if not wait:  # a read-only experiment dir: someone else's sweep, only looked at
            yield False
            return
        raise TunelabError(f"cannot take the experiment lock: {exc.strerror}", file=path) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        except OSError as exc:
            if exc.errno not in _NO_LOCKS:
                raise
        yield True
    finally:
        os.close(fd)  # releases the flock


@dataclass(frozen=True)
class Claim:
    """A run's claim file: which coordinator holds the run, since when; `token` tells our own claim apart."""

    host: str | None = None
    pid: int | None = None
    start: str | None = None  # the process's start time (process.proc_start): a reused pid is not the holder
    since: str | None = None
    token: str | None = None

    @classmethod
    def from_json(cls, data: object) -> Claim:
        """A claim being written (no lock on this filesystem) or cut reads as empty: judged by age alone."""
        if not isinstance(data, dict):
            return cls()
        return cls(**{f.name: data.get(f.name) for f in fields(cls)})

    def describe(self) -> str:
        return f"pid {self.pid or '?'} on {self.host or '?'} since {self.since or '?'}"


def _read(path: Path) -> tuple[Claim, float] | None:
    try:
        mtime = path.stat().st_mtime
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    return Claim.from_json(data), mtime


def _stale(claim: Claim, mtime: float) -> bool:
    if claim.host == socket.gethostname():
        return not (isinstance(claim.pid, int) and alive(claim.pid, claim.start))
    return time.time() - mtime > STALE_AFTER_S


def claim(run_dir: str | Path) -> str | None:
    """Claim a run: None when ours now, else its holder. Under experiment_lock, so takeovers are safe."""
    path = Path(run_dir) / CLAIM_FILE
    if path in _HELD:
        return None
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            got = _read(path)
            if got is not None and not _stale(*got):
                return got[0].describe()
            path.unlink(missing_ok=True)  # stale (or just released): take it over
            continue
        token = uuid.uuid4().hex
        me = Claim(socket.gethostname(), os.getpid(), proc_start(os.getpid()), time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   token)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(asdict(me), fh)
        _HELD[path] = token
        return None
    return "another coordinator (the claim kept changing hands)"


def release(run_dir: str | Path) -> None:
    """Drop our claim on a run (a claim taken over by someone else is left alone)."""
    path = Path(run_dir) / CLAIM_FILE
    token = _HELD.pop(path, None)
    got = _read(path) if token else None
    if got is not None and got[0].token == token:
        path.unlink(missing_ok=True)


def release_all() -> None:
    for path in list(_HELD):
        release(path.parent)


def touch_all() -> None:
    """Heartbeat: show coordinators on other hosts that our claims are alive."""
    for path in _HELD:
        with contextlib.suppress(OSError):
            os.utime(path)


atexit.register(release_all)
