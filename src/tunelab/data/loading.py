"""Read a dataset of the spec with the `datasets` library, whatever its files, into named splits.

Sources: a JSON object with train/validation/test lists; JSON or JSONL rows; CSV/TSV; Parquet; a
`save_to_disk` directory (Dataset or DatasetDict); or one such file per split. Splits the spec asks
tunelab to make come from the split record in the experiment directory (see data.splits), so every
run and every evaluation sees the same rows. Each file used is hashed for provenance.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.fsutil import sha256_of
from tunelab.spec import DatasetSpec

SUFFIX_BUILDERS = {".json": "json", ".jsonl": "json", ".ndjson": "json", ".csv": "csv", ".tsv": "csv",
                   ".parquet": "parquet", ".pq": "parquet"}
SPLIT_ALIASES = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation",
                 "dev": "validation", "test": "test"}


@dataclass(frozen=True)
class DataFile:
    """Provenance of one file (or save_to_disk directory) a dataset was read from."""

    path: str
    sha256: str
    rows: int
    splits: tuple[str, ...]


@dataclass
class SourceData:
    """The splits a dataset's files hold, before any split made by tunelab."""

    splits: dict[str, Any]  # split -> datasets.Dataset
    files: list[DataFile] = field(default_factory=list)


def read_source(spec: DatasetSpec) -> SourceData:
    """All splits present in the dataset's files (paths absolute). Cached per file state."""
    files = spec.split_files()
    key = tuple(sorted((s, p, *_stamp(Path(p))) for s, p in files.items()))
    return _read_cached(key)


def _stamp(path: Path) -> tuple[int, int]:
    if not path.exists():
        raise TunelabError("dataset file not found", file=path)
    st = path.stat()
    if path.is_dir():
        st_files = [p.stat() for p in path.rglob("*") if p.is_file()]
        return max([st.st_mtime_ns, *(s.st_mtime_ns for s in st_files)]), sum(s.st_size for s in st_files)
    return st.st_mtime_ns, st.st_size


@lru_cache(maxsize=16)
def _read_cached(key: tuple) -> SourceData:
    out = SourceData({})
    for split, path_str, _mtime, _size in key:
        path = Path(path_str)
        found = _read_path(path)
        if split != "*":
            if "train" not in found or len(found) != 1:
                raise TunelabError(f"the {split}: file must hold plain rows, not named splits", file=path)
            found = {split: found["train"]}
        out.splits.update(found)
        out.files.append(DataFile(str(path), sha256_of(path), sum(len(d) for d in found.values()), tuple(found)))
    return out


def _read_path(path: Path) -> dict[str, Any]:
    import datasets

    datasets.disable_progress_bars()
    if path.is_dir():
        return _read_saved(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIX_BUILDERS:
        raise TunelabError(f"unknown file type '{suffix}'; use .json, .jsonl, .csv, .tsv, .parquet or a directory "
                           "written by datasets' save_to_disk", file=path)
    if suffix == ".json":
        lists = _split_lists(path)
        if lists is not None:
            return {s: _from_rows(rows, path, s) for s, rows in lists.items()}
    extra = {"delimiter": "\t"} if suffix == ".tsv" else {}
    try:
        ds = datasets.load_dataset(SUFFIX_BUILDERS[suffix], data_files=str(path), split="train",
                                   keep_in_memory=True, **extra)
    except Exception as exc:  # datasets wraps the parser's error: show the parser's words
        cause = exc.__cause__ or exc
        raise TunelabError(f"cannot be read as {SUFFIX_BUILDERS[suffix].upper()}: {cause}", file=path) from None
    if len(ds) == 0:
        raise TunelabError("holds no rows", file=path)
    return {"train": ds}


def _read_saved(path: Path) -> dict[str, Any]:
    import datasets

    if not ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        raise TunelabError("a directory must be written by datasets' save_to_disk (no dataset_dict.json or "
                           "state.json here)", file=path)
    try:
        loaded = datasets.load_from_disk(str(path), keep_in_memory=True)
    except Exception as exc:
        raise TunelabError(f"cannot be loaded with datasets.load_from_disk: {exc}", file=path) from None
    if isinstance(loaded, datasets.DatasetDict):
        out = {}
        for name, ds in loaded.items():
            if name not in SPLIT_ALIASES:
                raise TunelabError(f"split '{name}' is not one of train, validation (valid, val, dev), test", file=path)
            out[SPLIT_ALIASES[name]] = ds
        return out
    return {"train": loaded}


def _split_lists(path: Path) -> dict[str, list] | None:
    """The split lists of a JSON object {train: [...], validation: [...], test: [...]}, or None when the
    file holds rows (a JSON list, or JSON lines)."""
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip()
    if not head.startswith(b"{"):
        return None
    first_line = head.split(b"\n", 1)[0]
    try:
        first = json.loads(first_line)
        if isinstance(first, dict) and not set(first) & set(SPLIT_ALIASES):
            return None  # JSON lines whose first row is complete
    except (json.JSONDecodeError, UnicodeDecodeError):  # a row cut by the 4 KiB head, or damaged bytes
        pass
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # let the datasets JSON reader try (JSON lines) and report its error
    if not isinstance(data, dict):
        return None
    lists = {SPLIT_ALIASES[k]: v for k, v in data.items() if k in SPLIT_ALIASES}
    if not lists:
        raise TunelabError(f"a JSON object without split lists (keys: {', '.join(list(data)[:8])}); "
                           "use {\"train\": [...], \"test\": [...]} or one row per line (JSONL)", file=path)
    for split, rows in lists.items():
        if not isinstance(rows, list):
            raise TunelabError("must be a list of rows", file=path, field=split)
    return lists


def _from_rows(rows: list, path: Path, split: str) -> Any:
    from datasets import Dataset

    if not rows:
        raise TunelabError("is an empty list", file=path, field=split)
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise TunelabError("each row must be a JSON object", file=path, field=f"{split}[{i}]")
    try:
        return Dataset.from_list(rows)
    except Exception as exc:  # arrow cannot type a column (mixed types)
        raise TunelabError(f"rows cannot be read as one table: {exc}", file=path, field=split) from None


def where(spec: DatasetSpec, split: str, index: int) -> str:
    """How errors point at a row: 'dataset caps (file.jsonl): train row 12'."""
    files = spec.split_files()
    source = files.get(split) or files.get("*") or next(iter(files.values()))
    return f"dataset {spec.name} ({source}): {split} row {index}"
