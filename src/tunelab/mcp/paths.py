"""The workspace root every path argument must resolve inside (symlinks included), and the nearest existing
names when a model directory or dataset file is missing: an assistant fixes a typo from one error message."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.init.discover import DATA_SUFFIXES, find_models, is_model_dir, models_roots

NEAREST = 3  # names offered when a model or dataset is missing
SKIPPED = {"runs", "controls", "report", "eval_logs"}  # experiment outputs, not data


@dataclass(frozen=True)
class Workspace:
    """The directory the server may read and write; `model_dirs` may also be read (configured model stores)."""

    root: Path
    model_dirs: tuple[Path, ...] = ()
    allow_job_shell: bool = False  # specs may put shell lines into job scripts (`tunelab mcp --allow-job-shell`)

    @classmethod
    def at(cls, root: str | Path, model_dirs: list[Path] | None = None, allow_job_shell: bool = False) -> Workspace:
        path = Path(root).resolve()
        if not path.is_dir():
            raise TunelabError("is not a directory", file=path, field="--root")
        return cls(path, tuple(p.resolve() for p in models_roots(model_dirs)), allow_job_shell)

    def inside(self, given: str | Path, field: str, readable_outside: bool = False, base: Path | None = None,
               file: Path | None = None) -> Path:
        """The argument as an absolute path (relative ones from the root, or from `base`: a spec's directory),
        refused unless it resolves, links followed, inside the root (or, for reading a model, inside a
        configured model directory). `file`: the spec naming it, for the error."""
        text = str(given)
        if not text or "\x00" in text:
            raise TunelabError("is empty or not a path", file=file, field=field)
        raw = Path(os.path.expanduser(text)) if text.startswith("~") else Path(text)
        path = (raw if raw.is_absolute() else (base or self.root) / raw).resolve()
        allowed = (self.root, *self.model_dirs) if readable_outside else (self.root,)
        if not any(path == top or path.is_relative_to(top) for top in allowed):
            raise TunelabError(f"{text!r} resolves to {path}, outside the workspace root {self.root}; refused",
                               file=file, field=field)
        return path

    def shown(self, path: Path) -> str:
        """A path as the assistant should pass it back: relative to the root when inside it."""
        return str(path.relative_to(self.root)) if path.is_relative_to(self.root) else str(path)

    def models(self) -> list[Path]:
        """Model directories under the root and the configured model directories."""
        return find_models([self.root, *self.model_dirs])

    def datasets(self) -> list[Path]:
        """Data files under the root (at most a few levels down; model, run, hidden directories skipped)."""
        found: list[Path] = []
        for dirpath, dirnames, files in os.walk(self.root):
            here = Path(dirpath)
            if is_model_dir(here):  # its config.json and tokenizer files are not data
                dirnames.clear()
                continue
            depth = len(here.relative_to(self.root).parts)
            dirnames[:] = [] if depth >= 3 else [d for d in dirnames if not d.startswith(".") and d not in SKIPPED]
            found += [here / f for f in files if Path(f).suffix in DATA_SUFFIXES and not f.startswith(".")]
        return sorted(found)

    def existing_model(self, given: str | Path, field: str) -> Path:
        """A model directory argument that exists, else an error naming the nearest model directories."""
        path = self.inside(given, field, readable_outside=True)
        if path.is_dir() and is_model_dir(path):
            return path
        raise TunelabError(f"no model directory at {given!s} (config.json and weights); "
                           f"nearest: {nearest(path, self.models(), self)}", field=field)

    def existing_dataset(self, given: str | Path, field: str) -> Path:
        """A dataset file argument that exists, else an error naming the nearest data files."""
        path = self.inside(given, field)
        if path.is_file():
            return path
        raise TunelabError(f"no dataset file at {given!s}; nearest: {nearest(path, self.datasets(), self)}",
                           field=field)

    def spec_models(self, spec_path: Path) -> None:
        """Every model directory the spec names exists, else an error naming the nearest ones (before planning,
        whose own error does not know the workspace)."""
        from tunelab.spec import load_spec

        for i, model in enumerate(load_spec(spec_path).models):
            path = (spec_path.parent / os.path.expanduser(model.path)).resolve()
            if not is_model_dir(path):
                raise TunelabError(f"no model directory at {model.path} (config.json and weights); "
                                   f"nearest: {nearest(path, self.models(), self)}", file=spec_path,
                                   field=f"models[{i}].path")


def nearest(missing: Path, candidates: list[Path], ws: Workspace) -> str:
    """The closest existing names (by name, then by the whole path), or what exists when none is close."""
    by_name: dict[str, list[Path]] = {}
    for c in candidates:
        by_name.setdefault(c.name, []).append(c)
    close = difflib.get_close_matches(missing.name, list(by_name), n=NEAREST, cutoff=0.4)
    picked = [p for name in close for p in by_name[name]][:NEAREST] or candidates[:NEAREST]
    return ", ".join(ws.shown(p) for p in picked) if picked else "none under the root"
