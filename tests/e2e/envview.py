"""A Python environment made of some of this venv's installed distributions, for tests that need a node
'that already has these packages' without installing them again: a bare venv whose one .pth file adds a folder
of symlinks to exactly those distributions' files (each distribution's RECORD says which are its own).

pip run with that venv's interpreter sees them as installed (outside the venv, so it never uninstalls them)."""

from __future__ import annotations

import importlib.metadata as md
import subprocess
import sys
import sysconfig
from pathlib import Path

from packaging.utils import canonicalize_name


def here_distributions() -> dict[str, md.Distribution]:
    """Canonical name -> distribution, of this interpreter's site-packages."""
    site = sysconfig.get_paths()["purelib"]
    return {canonicalize_name(d.metadata["Name"]): d for d in md.distributions(path=[site])}


def link_view(names: set[str], view: Path) -> None:
    """Symlink into `view` the top-level files and folders of these distributions (their modules, .libs folders,
    dist-info, and .pth files, which `site.addsitedir` then reads)."""
    dists = here_distributions()
    view.mkdir(parents=True, exist_ok=True)
    for name in sorted(names):
        dist = dists[name]
        top = {Path(str(f)).parts[0] for f in dist.files or () if not str(f).startswith("..")}
        for entry in sorted(top):
            source = Path(str(dist.locate_file(entry)))
            if source.exists() and not (view / entry).exists():
                (view / entry).symlink_to(source)


def view_env(root: Path, names: set[str]) -> Path:
    """A venv at root/venv (no pip) seeing these distributions of this venv; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    python = root / "venv" / "bin" / "python"
    # a folder named site-packages, as on any node: dill (datasets' fingerprints) pickles by value the modules
    # whose path is neither under the interpreter's prefix nor has "site-packages" in it, and fails on pyarrow's
    view = root / "view" / "site-packages"
    link_view(names, view)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "view.pth").write_text(f"import site; site.addsitedir({str(view)!r})\n")
    return python
