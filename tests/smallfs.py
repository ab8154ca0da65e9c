"""A real small filesystem for the full-disk tests: a size-limited tmpfs, or a loop-mounted ext4 image where
tmpfs is refused, mounted by the test itself and unmounted in a finalizer; the test skips, saying why, where
mounting is not permitted."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def _mount(mnt: Path, size_kib: int, image: Path) -> str | None:
    """Mount a size_kib filesystem at mnt; None, or why it could not be."""
    if os.geteuid() != 0:
        return "mounting a filesystem needs root"
    tried = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(mnt)],
                           capture_output=True, text=True)
    if tried.returncode == 0:
        return None
    steps = [["truncate", "-s", f"{size_kib}k", str(image)], ["mkfs.ext4", "-q", "-m", "0", str(image)],
             ["mount", "-o", "loop", str(image), str(mnt)]]
    for argv in steps:
        if shutil.which(argv[0]) is None:
            return f"tmpfs refused ({tried.stderr.strip()}) and {argv[0]} is missing"
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode:
            return f"tmpfs refused ({tried.stderr.strip()}); {' '.join(argv[:2])}: {done.stderr.strip()}"
    return None


def small_filesystem(tmp_path: Path, request: pytest.FixtureRequest, size_kib: int) -> Path:
    """A size_kib filesystem mounted at tmp_path/mnt for this test (unmounted after it)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    why = _mount(mnt, size_kib, tmp_path / "fs.img")
    if why:
        pytest.skip(f"no small filesystem to fill: {why}")
    request.addfinalizer(lambda: subprocess.run(["umount", str(mnt)], check=True))
    return mnt


def fill(mnt: Path, leave: int) -> Path:
    """A filler file taking all but `leave` bytes of mnt's free space (written, not sparse)."""
    size = shutil.disk_usage(mnt).free - leave
    path = mnt / "filler"
    with open(path, "wb") as fh:
        for _ in range(max(0, size) // (1 << 16)):
            fh.write(b"\0" * (1 << 16))
        fh.write(b"\0" * (max(0, size) % (1 << 16)))
    return path
