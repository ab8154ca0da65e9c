"""pip itself, run for the node: tunelab's wheel built, a dry-run resolution for the node's Python and platform
whose report is the plan's input, and the downloads. Nothing here decides what to carry (that is plan.py)."""

from __future__ import annotations

import email.parser
import hashlib
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from tunelab.errors import TunelabError
from tunelab.wheelhouse.plan import TORCH, Resolved, parse_report
from tunelab.wheelhouse.target import Target

_CONSTRAINT = re.compile(r"The user requested \(constraint\) ([A-Za-z0-9][A-Za-z0-9._-]*)==")
MAX_ROUNDS = 5  # pip resolutions, each dropping the pins pip named in a conflict


def _pip(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, check=False)


def _said(done: subprocess.CompletedProcess[str]) -> str:
    """What pip said, both streams (it reports a conflict's causes on stdout), its progress bars and its
    warnings about configured index folders that lack a project left out."""
    lines = (done.stdout + "\n" + done.stderr).splitlines()
    return "\n".join(line for line in lines if not line.startswith("WARNING: Location") and "━" not in line)


def _failed(what: str, done: subprocess.CompletedProcess[str]) -> TunelabError:
    tail = "\n".join(_said(done).strip().splitlines()[-15:])
    return TunelabError(f"{what} failed (pip exit {done.returncode}):\n{tail}")


def build_wheel(project: Path, work: Path) -> Path:
    """tunelab's wheel from a copy of pyproject.toml, README.md and src/, so a stale build/ cannot slip a removed module
    in; with this environment's backend where it qualifies, since pip's isolated build would install it again."""
    copy = work / "project"
    shutil.copytree(project / "src", copy / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(project / name, copy / name)
    isolation = ["--no-build-isolation"] if build_requirements_met(copy / "pyproject.toml") else []
    done = _pip(["wheel", "--no-deps", "-q", *isolation, "-w", str(work / "dist"), str(copy)])
    if done.returncode != 0:
        raise _failed("building tunelab's wheel", done)
    return next((work / "dist").glob("*.whl"))


def build_requirements_met(pyproject: Path) -> bool:
    """Whether this environment meets pyproject's [build-system] requires (markers evaluated here)."""
    requires = tomllib.loads(pyproject.read_text()).get("build-system", {}).get("requires")
    if requires is None:  # no [build-system] table: pip would fall back to a legacy setuptools build
        return False
    for text in requires:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            installed = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            return False
        if not req.specifier.contains(installed, prereleases=True):
            return False
    return True


@dataclass(frozen=True)
class WheelMeta:
    name: str
    version: str
    requires: tuple[str, ...]


def wheel_metadata(wheel: Path) -> WheelMeta:
    """Name, version and Requires-Dist lines from a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as z:
        meta_file = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(z.read(meta_file).decode())
    return WheelMeta(meta["Name"], meta["Version"], tuple(meta.get_all("Requires-Dist") or ()))


def resolve(wheel: Path, extras: Iterable[str], target: Target, pins: Mapping[str, str],
            work: Path) -> tuple[list[Resolved], dict[str, str]]:
    """pip's dry-run resolution of tunelab for the node from nothing, under `pins`. Pins pip names in a conflict are
    dropped (out of range, pip's words the reason) and pip runs again, at most MAX_ROUNDS times; torch's are the
    node's."""
    pins, reasons = dict(pins), dict[str, str]()
    requirement = f"{wheel}[{','.join(sorted(extras))}]" if extras else str(wheel)
    for _ in range(MAX_ROUNDS):
        (work / "constraints.txt").write_text("".join(p + "\n" for p in pins.values()))
        report = work / "report.json"
        done = _pip(["install", "--dry-run", "--ignore-installed", "--target", str(work / "empty"),
                     "--report", str(report), "-c", str(work / "constraints.txt"), *target.pip_args(),
                     requirement])
        if done.returncode == 0:
            return parse_report(json.loads(report.read_text())), reasons
        said = _said(done)
        named = {str(canonicalize_name(n)) for n in _CONSTRAINT.findall(said)} & set(pins)
        if not named:
            raise _failed(f"resolving tunelab's dependencies for Python {target.python} on {target.platform}", done)
        conflict = _conflict_lines(said)
        if TORCH in named:
            raise TunelabError(f"the node's torch ({pins[TORCH]}) conflicts with tunelab's dependencies; "
                               f"upgrade the node's PyTorch. pip: {conflict}")
        for name in named:
            reasons[name] = f"pip could not keep {pins.pop(name)}: {conflict}"
    raise TunelabError(f"pip still found conflicts with the node's packages after {MAX_ROUNDS} resolutions")


def _conflict_lines(said: str) -> str:
    """pip's 'The conflict is caused by:' block, on one line."""
    lines = said.splitlines()
    start = next((i for i, line in enumerate(lines) if "conflict is caused by" in line), None)
    if start is None:
        return " ".join(line.strip() for line in lines[-3:])
    block = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        block.append(line.strip())
    return "; ".join(block)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(items: Iterable[Resolved], target: Target, out: Path, work: Path) -> dict[str, Path]:
    """Canonical name -> the downloaded wheel in `out`, checked by pip against the resolution's sha256."""
    items = list(items)
    if not items:
        return {}
    hashed = all(r.sha256 for r in items)  # pip checks hashes for all requirements or none
    lines = [f"{r.name}=={r.version}" + (f" --hash=sha256:{r.sha256}" if hashed else "") for r in items]
    (work / "download.txt").write_text("\n".join(lines) + "\n")
    done = _pip(["download", "--no-deps", "-q", "-d", str(out), "-r", str(work / "download.txt"), *target.pip_args()])
    if done.returncode != 0:
        raise _failed("downloading the wheels", done)
    found: dict[tuple[str, Version], Path] = {}
    for path in out.glob("*.whl"):
        name, version, _, _ = parse_wheel_filename(path.name)
        found[(str(canonicalize_name(name)), version)] = path
    wanted = {r.name: (r.name, Version(r.version)) for r in items}
    missing = sorted(name for name, key in wanted.items() if key not in found)
    if missing:
        raise TunelabError(f"pip download left out {', '.join(missing)}")
    return {name: found[key] for name, key in wanted.items()}
