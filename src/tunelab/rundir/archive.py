"""archive.json: what `tunelab archive` (export/archive.py) copied where and freed, kept in the experiment
directory (and the archive) so that the report can say it without importing the archiver."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunelab.fsutil import read_json

MANIFEST = "archive.json"


@dataclass
class ArchiveManifest:
    archived_at: str
    experiment_dir: str
    archive_dir: str
    keep: str
    files: dict[str, str]  # relative path -> sha256 (verified in the archive)
    bytes_archived: int
    removed: dict[str, int]  # relative directory -> bytes freed in the working directory
    bytes_removed: int
    untouched: dict[str, str]


def read_manifest(experiment_dir: str | Path) -> ArchiveManifest | None:
    """The last archive of this experiment (None if never archived)."""
    data = read_json(Path(experiment_dir) / MANIFEST, default=None)
    return ArchiveManifest(**data) if data else None
