"""A dataset verified before any job: every row of every split a sweep reads converts, and every image opens.

Remembered on disk (diskcache.py) under everything the check reads — the dataset's spec, the prompt templates,
the stamps (mtime, size) of its files and split record, and of tunelab's own checking code — so a second plan of
the same inputs skips reading the rows, and any change checks again. A new split is recorded only after its
rows passed, and never from the cache: a record left by a failed plan would refuse the corrected file as
'changed since its split was made'."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from tunelab.data.images import check_readable
from tunelab.data.loading import DataFile, where
from tunelab.data.splits import load_data, split_record_path
from tunelab.diskcache import cached_json, file_stamps
from tunelab.spec import DatasetSpec, resolve_path

DATA_CHECKING_CODE = ("data", "spec")  # tunelab packages whose code decides whether a dataset passes


@dataclass(frozen=True)
class DatasetInfo:
    """What plan verified of a dataset: its row format, split sizes and the files it came from."""

    name: str
    format: str
    counts: dict[str, int]
    files: list[DataFile]
    split_record: str | None
    eval_only: bool


def code_stamps(packages: tuple[str, ...]) -> list:
    """Stamps of the tunelab packages' code that decides whether a check passes: part of a check's key."""
    root = Path(__file__).parent.parent
    return file_stamps([*sorted(p for pkg in packages for p in (root / pkg).glob("*.py"))])


def dataset_stamps(d: DatasetSpec, base: Path) -> list:
    """Stamps of a dataset's files (a save_to_disk directory: of the files in it)."""
    paths: list[str | Path] = []
    for f in d.split_files().values():
        p = resolve_path(base, f)
        paths += sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]
    return file_stamps(paths)


def verified_dataset(d: DatasetSpec, templates: list[str | None], system_prompt: str | None, experiment_dir: Path,
                     splits: set[str]) -> DatasetInfo:
    """The dataset's rows checked under every prompt template for `splits` (from the cache when they passed for
    the same inputs); a split the spec asks for is made here and recorded in `experiment_dir`."""
    record = split_record_path(d, experiment_dir)
    if d.split is not None and not record.is_file():
        return _checked(d, templates, system_prompt, experiment_dir, splits)
    key = [d.model_dump_json(), templates, system_prompt, sorted(splits), str(experiment_dir),
           dataset_stamps(d, Path("/")), file_stamps([record]), code_stamps(DATA_CHECKING_CODE)]
    kept = cached_json("verified-dataset", key,
                       lambda: asdict(_checked(d, templates, system_prompt, experiment_dir, splits)))
    return DatasetInfo(**{**kept, "files": [DataFile(**{**f, "splits": tuple(f["splits"])}) for f in kept["files"]]})


def provenance_json(datasets: dict[str, DatasetInfo]) -> str:
    """data/provenance.json's text: every data file a plan read (path, sha256, rows), for the report."""
    return json.dumps({name: asdict(info) for name, info in datasets.items()}, indent=2, default=str) + "\n"


def _checked(d: DatasetSpec, templates: list[str | None], system_prompt: str | None, experiment_dir: Path,
             splits: set[str]) -> DatasetInfo:
    recorded = d.split is None or split_record_path(d, experiment_dir).is_file()
    data = load_data(d, experiment_dir if recorded else None)  # a new split is made in memory first
    fmt = None
    for template in templates:
        reader = data.reader(template, system_prompt)
        fmt = reader.format
        for split in sorted(splits):
            examples = data.examples(split, reader)  # every row converts, or an error names it
            check_readable(examples, lambda i, split=split: where(d, split, i))  # and every image opens (rows with images)
    if not recorded:
        data = load_data(d, experiment_dir, create_split=True)  # the same seeded split, recorded now
    rec = str(data.split_record) if data.split_record else None
    return DatasetInfo(d.name, fmt or "?", data.counts(), data.files, rec, d.eval_only)
