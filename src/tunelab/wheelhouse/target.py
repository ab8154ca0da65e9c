"""The node a wheelhouse is for: its Python version and platform tag, as pip needs them to resolve for another machine
and as environment-marker values."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

from packaging import tags

from tunelab.errors import TunelabError

_PYTHON = re.compile(r"^3\.(\d+)(\.\d+)?$")
_MANYLINUX = re.compile(r"^manylinux_(\d+)_(\d+)_(\w+)$")
_LEGACY = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
_MUSLLINUX = re.compile(r"^musllinux_(\d+)_(\d+)_(\w+)$")


@dataclass(frozen=True)
class Target:
    """python: '3.12.4' (`python -V` on the node; '3.12' reads as 3.12.0, which a package requiring a later
    patch release refuses); platform: a wheel platform tag such as 'manylinux_2_28_x86_64'."""

    python: str
    platform: str

    def __post_init__(self) -> None:
        if not _PYTHON.match(self.python):
            raise TunelabError(f"'{self.python}' is not a CPython 3 version such as 3.12", field="--python")
        if not platform_tags(self.platform):
            raise TunelabError(f"'{self.platform}' is not a wheel platform tag such as manylinux_2_28_x86_64",
                               field="--platform")

    def pip_args(self) -> list[str]:
        """Resolve and download for this node, wheels only (pip refuses sdists for a foreign platform)."""
        args = ["--only-binary=:all:", "--implementation", "cp", "--python-version", self.python]
        for tag in platform_tags(self.platform):
            args += ["--platform", tag]
        return args

    def markers(self) -> dict[str, str]:
        """Every value a marker may name, for this node (never the running machine's)."""
        system, sys_platform, os_name, machine = _system(self.platform)
        full = self.python if self.python.count(".") == 2 else self.python + ".0"
        return {"python_version": ".".join(self.python.split(".")[:2]), "python_full_version": full,
                "implementation_name": "cpython", "implementation_version": full,
                "platform_python_implementation": "CPython", "platform_system": system,
                "sys_platform": sys_platform, "os_name": os_name, "platform_machine": machine,
                "platform_release": "", "platform_version": "", "extra": ""}


def platform_tags(platform: str) -> list[str]:
    """The tags a node of this platform installs, newest first: a manylinux_2_28 node also runs older glibc's wheels,
    which pip does not infer from a PEP 600 tag. Unknown: [] (refused by Target)."""
    legacy = re.match(r"^(manylinux1|manylinux2010|manylinux2014)_(\w+)$", platform)
    if legacy:
        major, minor = _LEGACY[legacy.group(1)]
        platform = f"manylinux_{major}_{minor}_{legacy.group(2)}"
    linux = _MANYLINUX.match(platform)
    if linux:
        major, minor, arch = int(linux.group(1)), int(linux.group(2)), linux.group(3)
        if major != 2:
            return []
        oldest = 5 if arch in ("x86_64", "i686") else 17
        tags = []
        for m in range(minor, oldest - 1, -1):
            tags.append(f"manylinux_2_{m}_{arch}")
            tags += [f"{name}_{arch}" for name, (_, lm) in _LEGACY.items() if lm == m]
        return tags
    musl = _MUSLLINUX.match(platform)
    if musl:
        return [f"musllinux_{musl.group(1)}_{m}_{musl.group(3)}" for m in range(int(musl.group(2)), -1, -1)]
    if re.match(r"^(macosx_\d+_\d+_\w+|win_amd64|win_arm64|win32)$", platform):
        return [platform]
    return []


def _system(platform: str) -> tuple[str, str, str, str]:
    """(platform_system, sys_platform, os_name, platform_machine) of a platform tag."""
    if platform.startswith("macosx"):
        return "Darwin", "darwin", "posix", platform.rsplit("_", 1)[1]
    if platform.startswith("win"):
        return "Windows", "win32", "nt", {"win_amd64": "AMD64", "win_arm64": "ARM64"}.get(platform, "x86")
    linux = _MANYLINUX.match(platform_tags(platform)[0]) or _MUSLLINUX.match(platform)
    return "Linux", "linux", "posix", linux.group(3) if linux else ""


def this_machine() -> Target:
    """The running interpreter's Python and its newest manylinux tag (the defaults of scripts/wheelhouse)."""
    python = ".".join(map(str, sys.version_info[:3]))  # whole: Requires-Python may name a patch release
    linux = next((t.platform for t in tags.sys_tags() if t.platform.startswith("manylinux_")), None)
    return Target(python, linux or next(iter(tags.sys_tags())).platform)
