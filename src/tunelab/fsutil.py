"""Atomic file writes, strict JSONL reads and SQLite sessions: a crash never leaves a half-written status,
config or report behind, and a damaged file or a locked database is reported, never skipped."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from tunelab.errors import NoSpaceError, TunelabError
from tunelab.faults import kill_point
from tunelab.host.diskspace import free_bytes


def atomic_write_text(path: str | Path, text: str, durable: bool = True, check_unchanged: bool = True) -> Path:
    """Write via a temp file in the same directory and os.replace, so readers see old or new, never half.

    durable=False skips the fsync: for generated files that a rerun rewrites (scaffold writes
    thousands of them), atomicity is what matters. A file that already holds `text` is left alone, unless
    check_unchanged=False (a writer that holds the file and knows it changed: no reading it back).
    """
    path = Path(path)
    try:
        if check_unchanged and path.stat().st_size == len(text.encode("utf-8")) \
                and path.read_text(encoding="utf-8") == text:
            return path
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~UMASK)  # mkstemp makes 0600; written files get the usual mode
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        kill_point("write", f"{path.parent.name}/{path.name}")  # the fault benchmark: written, not yet in place
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
            raise no_space_error(path, len(text.encode("utf-8"))) from exc
        if isinstance(exc, OSError) and (tmp is None or exc.filename in (None, tmp)):  # tmp None: mkstemp failed
            raise oserror_naming(exc, path) from exc
        raise
    return path


# ---------------------------------------------------------------- a full disk or quota

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# what libraries that do not raise OSError say about a full disk (safetensors: "No space left on device (os
# error 28)") and about a write that failed without saying why (torch.save: "unexpected pos", "file write failed")
_FULL_TEXT = re.compile(r"no space left on device|disk quota exceeded|os error (28|122)\b|database or disk is full",
                        re.IGNORECASE)
_WRITE_FAILED = re.compile(r"file write failed|unexpected pos|PytorchStreamWriter", re.IGNORECASE)
FULL_BELOW = 1 << 20  # a write that failed without a reason, on a filesystem with less than this free: full


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def is_disk_full(exc: BaseException, path: str | Path) -> bool:
    """Did this error come from a full filesystem or quota? ENOSPC/EDQUOT anywhere in its chain, a library's
    words for them, or a write that failed unexplained (torch.save) while path's filesystem is (nearly) full."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in FULL_ERRNOS or _FULL_TEXT.search(str(e)):
            return True
    if any(_WRITE_FAILED.search(str(e)) for e in _chain(exc)):
        free = free_bytes(path)
        return free is not None and free < FULL_BELOW
    return False


def no_space_error(path: str | Path, needed: int | None,
                   next_step: str = "free space, then run the command again") -> NoSpaceError:
    """The one-line error of a write that did not fit: the path, what it needed, what is free now."""
    free = free_bytes(path)
    sizes = (f"needs ~{human_bytes(needed)}, " if needed else "") + f"{human_bytes(free)} free"
    return NoSpaceError(path, needed, free, sizes, next_step)


@contextmanager
def space_guard(path: str | Path, needed: int | None = None) -> Iterator[None]:
    """Writes under `path` that find the disk (or the quota) full raise NoSpaceError naming it; anything else
    passes unchanged. The one catch point of writers whose libraries do not raise OSError (the trainer's
    save, a figure); fsutil's own writes raise it themselves."""
    try:
        yield
    except NoSpaceError:
        raise
    except Exception as exc:
        if not is_disk_full(exc, path):
            raise
        raise no_space_error(path, needed) from exc


def append_text(path: str | Path, text: str) -> None:
    """Append and flush (a reader polls the file). A full disk raises NoSpaceError; what was cut off is one
    last line without its newline, which read_jsonl skips."""
    with space_guard(path, len(text.encode("utf-8"))), open(path, "a", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()


def oserror_naming(exc: OSError, path: str | Path) -> OSError:
    """The same OSError (class, errno) naming `path`: a failed write() names no file, and a failed temp file
    names one the user never asked for; the message should name the file they know."""
    return type(exc)(exc.errno, exc.strerror or str(exc), str(path))


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _read_umask()  # read once: os.umask is process-wide and not thread-safe to probe


def atomic_write_json(path: str | Path, data: Any, durable: bool = True, check_unchanged: bool = True) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n", durable,
                             check_unchanged)


# libyaml's C loader and dumper when PyYAML has them (much faster: a 1,000-run sweep is 1,000 run.yaml files).
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def load_yaml(text: str) -> Any:
    """yaml.safe_load, with the C loader when available (same errors: yaml.YAMLError)."""
    return yaml.load(text, Loader=_Loader)


_PLAIN = re.compile(r"^[A-Za-z_/][A-Za-z0-9_./-]*$")
_SPECIAL = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}


def _scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return ".nan"
        if math.isinf(v):
            return ".inf" if v > 0 else "-.inf"
        r = repr(v)
        return r.replace("e", ".0e", 1) if "e" in r and "." not in r else r  # YAML 1.1 floats need a dot
    if _PLAIN.match(v) and v.lower() not in _SPECIAL:
        return v
    text = json.dumps(v, ensure_ascii=False)  # a JSON string is a valid YAML double-quoted scalar
    return text if text[1:-1].isprintable() else json.dumps(v)


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _emit(data: Any, indent: int, out: list[str]) -> None:
    pad = " " * indent
    for key, v in data.items():
        k = _scalar(str(key))
        if _is_scalar(v):
            out.append(f"{pad}{k}: {_scalar(v)}")
        elif isinstance(v, dict):
            if v:
                out.append(f"{pad}{k}:")
                _emit(v, indent + 2, out)
            else:
                out.append(f"{pad}{k}: {{}}")
        elif all(_is_scalar(x) for x in v):
            out.append(f"{pad}{k}: [{', '.join(_scalar(x) for x in v)}]")
        else:
            out.append(f"{pad}{k}:")
            for item in v:
                sub: list[str] = []
                _emit(item, indent + 4, sub)
                out.append(f"{pad}  - {sub[0].lstrip()}" if sub else f"{pad}  - {{}}")
                out.extend(sub[1:])


def _plain_data(v: Any) -> bool:
    if _is_scalar(v):
        return True
    if isinstance(v, dict):
        return all(isinstance(k, str) and _plain_data(x) for k, x in v.items())
    if isinstance(v, list):
        return all(_is_scalar(x) for x in v) or all(isinstance(x, dict) and _plain_data(x) for x in v)
    return False


def dump_yaml(data: Any) -> str:
    """Block-style YAML. Plain config data (dicts, lists, scalars) goes through a small emitter that
    is much faster than PyYAML's (a sweep writes a run.yaml per run); anything else through PyYAML. Both read back equal (tested)."""
    if isinstance(data, dict) and _plain_data(data):
        out: list[str] = []
        _emit(data, 0, out)
        return "\n".join(out) + "\n"
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True)


def atomic_write_yaml(path: str | Path, data: Any, durable: bool = True) -> Path:
    return atomic_write_text(path, dump_yaml(data), durable)


def read_json(path: str | Path, default: Any = None) -> Any:
    """Read JSON; a missing or truncated file gives `default` (a job may be killed mid-write elsewhere)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def read_jsonl(path: str | Path) -> list[dict]:
    """Read JSON lines (one object each). Only a cut-off last line, one without its newline, is skipped:
    that is a job killed while writing it. Any other bad line is corruption and raises, naming file and
    line, since silently dropping it would lose or shift steps in every figure built from the file."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    rows: list[dict] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            if number == len(lines):  # no newline after it: the write was cut off
                continue
            raise TunelabError(f"line {number} is corrupted ({exc}); repair or delete that line, then rerun",
                               file=path) from None
        if not isinstance(row, dict):
            raise TunelabError(f"line {number} is not a JSON object; repair or delete that line, then rerun", file=path)
        rows.append(row)
    return rows


# ---------------------------------------------------------------- SQLite (experiment ledger, history ledger)

SQLITE_TIMEOUT_S = 30.0  # how long a command waits for another process's write before it gives up
# A rollback journal, never WAL: WAL keeps its index in shared memory (the -shm file, mmap'ed), which NFS,
# Lustre and GPFS do not keep coherent between hosts, so two hosts can both "own" the database and corrupt
# it. DELETE mode needs only the POSIX byte-range locks those filesystems provide, with synchronous=FULL.
SQLITE_JOURNAL_MODE = "DELETE"


@contextmanager
def sqlite_session(path: str | Path) -> Iterator[sqlite3.Connection]:
    """One connection with network-filesystem-safe settings; commit on success, roll back on error.

    A lock still held after SQLITE_TIMEOUT_S, a read-only or full disk, or a damaged file becomes a
    TunelabError naming the database (the CLI prints one line), whichever statement hit it."""
    try:
        conn = sqlite3.connect(path, timeout=SQLITE_TIMEOUT_S)
    except sqlite3.OperationalError as exc:
        raise _sqlite_error(exc, path) from exc
    conn.row_factory = sqlite3.Row
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(SQLITE_TIMEOUT_S * 1000)}")
        conn.execute(f"PRAGMA journal_mode = {SQLITE_JOURNAL_MODE}")  # also turns an old WAL ledger back
        conn.execute("PRAGMA synchronous = FULL")  # the journal reaches the disk before the database changes
        yield conn
        conn.commit()
    except BaseException as exc:
        conn.rollback()
        if isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError:
            raise _sqlite_error(exc, path) from exc
        raise
    finally:
        conn.close()


def add_missing_columns(conn: sqlite3.Connection, table: str, columns: dict[str, str]) -> None:
    """A database from an older tunelab gains the columns added since ({name: SQL type}); existing rows read
    NULL there. The one migration of the experiment ledger and the history ledger (nothing is dropped)."""
    have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
    for name, sqltype in columns.items():
        if name not in have:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {sqltype}")


def _sqlite_error(exc: sqlite3.Error, path: str | Path) -> TunelabError:
    text = str(exc)
    if is_disk_full(exc, path):
        return no_space_error(path, None)
    if "locked" in text or "busy" in text:
        text = (f"the database is locked: another tunelab command (run, status --watch, ingest) is writing it; "
                f"waited {SQLITE_TIMEOUT_S:g} s, retry when it has finished")
    return TunelabError(f"SQLite: {text}", file=path)


def directory_bytes(path: Path) -> int:
    """Bytes of the files under path, 0 when it is no directory (a checkpoint's size, a run directory's use)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def sha256_of(path: Path) -> str:
    """sha256 of a file; of a directory, over its files' names and contents (sorted)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def human_bytes(n: float | None) -> str:
    """1536 -> '1.5 KiB' (binary units): the one way tunelab writes a size."""
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def human_seconds(s: float) -> str:
    """95 -> '1.6 min': the one way tunelab writes a duration it estimates (plans, batch reasons, next steps)."""
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"
