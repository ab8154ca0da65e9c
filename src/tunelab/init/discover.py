"""Model directories and dataset files on disk, offered as choices by `tunelab init`."""

from __future__ import annotations

import os
from pathlib import Path

MODELS_ENV = "TUNELAB_MODELS"  # os.pathsep-separated directories holding one HF model directory each
DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet")
MAX_DEPTH = 3


def models_roots(extra: list[Path] | None = None) -> list[Path]:
    """Where to look for models: the given directories, then $TUNELAB_MODELS."""
    env = [Path(p) for p in os.environ.get(MODELS_ENV, "").split(os.pathsep) if p]
    return [p for p in [*(extra or []), *env] if p.is_dir()]


def is_model_dir(path: Path) -> bool:
    """A Hugging Face model directory: config.json and some weights."""
    return (path / "config.json").is_file() and any(
        path.glob(pattern) for pattern in ("*.safetensors", "*.bin", "*.safetensors.index.json"))


def find_models(roots: list[Path]) -> list[Path]:
    """Model directories at most MAX_DEPTH levels under the roots (a root may itself be one), sorted."""
    found: set[Path] = set()
    for root in roots:
        for dirpath, dirnames, _ in os.walk(root, followlinks=True):  # model stores often link; depth bounds it
            here = Path(dirpath)
            if is_model_dir(here):
                found.add(here.absolute())
                dirnames.clear()  # checkpoints inside a model dir are not other models
            elif len(here.relative_to(root).parts) >= MAX_DEPTH:
                dirnames.clear()
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    return sorted(found)


def find_datasets(root: Path) -> list[Path]:
    """Data files at most MAX_DEPTH levels under root, skipping hidden directories and experiment outputs."""
    skip = {"runs", "controls", "eval_only", "report", "node_modules", "__pycache__"}
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        depth = len(here.relative_to(root).parts)
        dirnames[:] = [] if depth >= MAX_DEPTH else [d for d in dirnames if not d.startswith(".") and d not in skip]
        found += [here / f for f in filenames if f.endswith(DATA_SUFFIXES) and not f.startswith(".")
                  and not is_model_dir(here)]
    return sorted(p.resolve() for p in found)
