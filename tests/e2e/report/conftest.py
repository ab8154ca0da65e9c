"""Headless Chromium for the report's browser test: installed from Debian when missing (as root)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")


def _install() -> str:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            if res.returncode != 0:
                return f"`{' '.join(cmd)}` failed: {(res.stderr or res.stdout).strip()[-300:]}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"apt-get failed: {exc}"
    return ""


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Path of a Chromium binary; installs the Debian package when absent and we are root."""
    found = CHROMIUM if CHROMIUM.is_file() else (Path(p) if (p := shutil.which("chromium")) else None)
    if found is None:
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.skip("chromium is not installed and cannot be installed here (needs root and apt-get); "
                        "install the Debian package `chromium` to run this test")
        why = _install()
        if why or not CHROMIUM.is_file():
            pytest.skip(f"chromium could not be installed: {why or 'no /usr/bin/chromium after install'}")
        found = CHROMIUM
    return found


@pytest.fixture
def run_chromium(chromium, tmp_path):
    """run_chromium(*args) -> CompletedProcess, headless with a throwaway profile."""

    def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        profile = tmp_path / "chromium-profile"
        cmd = [str(chromium), *FLAGS, f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)

    return _run
