"""What a test session left in the temp dir, said at its end. CI runs the suite on the same machine again and again:
a benchmark smoke's ~600 MB of scratch a session, never removed, once filled its disk (README: Development)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

PYTESTS_OWN = "pytest-of-"  # pytest's base temp dirs: its retention policy (pyproject.toml) decides what stays
SHOWN = 5


def entries() -> set[str]:
    """The temp dir's entries now."""
    return set(os.listdir(tempfile.gettempdir()))


def size(path: Path) -> int:
    """Bytes of a file, or of the files under a dir (fsutil.directory_bytes); 0 for what can no longer be read."""
    from tunelab.fsutil import directory_bytes  # here: conftest imports this module before it sets tunelab's env

    try:
        return directory_bytes(path) if path.is_dir() and not path.is_symlink() else path.lstat().st_size
    except OSError:  # gone, or changing under another process meanwhile
        return 0


def report(before: set[str]) -> str | None:
    """One line on the entries that appeared since `before` (the largest first), or None when there are none."""
    base = Path(tempfile.gettempdir())
    new = [name for name in entries() - before if not name.startswith(PYTESTS_OWN)]
    if not new:
        return None
    sizes = sorted(((size(base / name), name) for name in new), reverse=True)
    shown = ", ".join(f"{name} ({n / 2**20:.1f} MiB)" for n, name in sizes[:SHOWN])
    more = f" and {len(sizes) - SHOWN} more" if len(sizes) > SHOWN else ""
    return (f"left in {base} by this session (or beside it): {len(sizes)} {'entry' if len(sizes) == 1 else 'entries'}, "
            f"{sum(n for n, _ in sizes) / 2**20:.1f} MiB: {shown}{more}")
