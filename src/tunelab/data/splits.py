"""A dataset's splits as training and evaluation see them, including splits tunelab makes.

`split: {validation: 0.1, test: 0.1, seed: 0}` carves held-out rows out of the training rows once:
the row indices are written to <experiment>/data/<dataset>.split.json (with the source's sha256), and
every later run, evaluation and `tunelab run` reads that record instead of splitting again. A
changed source file is an error, not a silent re-split.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from tunelab.data.conversation import Example
from tunelab.data.loading import DataFile, SourceData, read_source, where
from tunelab.data.rows import RowReader, detect_format
from tunelab.errors import TunelabError
from tunelab.fsutil import atomic_write_json, read_json
from tunelab.spec import SPLIT_NAMES, DatasetSpec, SplitFractions

SPLITS = SPLIT_NAMES
DATA_DIR = "data"
PROVENANCE_FILE = "provenance.json"  # data/provenance.json: every data file a plan read (plan writes, report reads)


@dataclass
class LoadedData:
    """One dataset's splits (datasets.Dataset each), the files they came from, and how they were split."""

    spec: DatasetSpec
    splits: dict[str, Any]
    files: list[DataFile]
    split_record: Path | None = None

    def counts(self) -> dict[str, int]:
        return {s: len(self.splits[s]) for s in SPLITS if s in self.splits}

    def require(self, split: str) -> Any:
        if split not in self.splits:
            have = ", ".join(self.splits) or "none"
            raise TunelabError(
                f"dataset '{self.spec.name}' has no '{split}' split (it has: {have}); give a {split}: file, a file "
                f"with a '{split}' list, or let tunelab split it: split: {{{split}: 0.1}}",
                file=self.files[0].path if self.files else None)
        return self.splits[split]

    def reader(self, template: str | None, system_prompt: str | None) -> RowReader:
        """The row reader for this dataset and a prompt template (format detected from the columns)."""
        columns = list(next(iter(self.splits.values())).column_names)
        fmt = detect_format(columns, self.spec.format, template, self.spec.input_field, self.spec.output_field,
                            f"dataset {self.spec.name} ({self.files[0].path})")
        return RowReader(fmt, template, self.spec.input_field, self.spec.output_field, system_prompt,
                         image_field=self.spec.image_field)

    def examples(self, split: str, reader: RowReader, limit: int | None = None) -> list[Example]:
        ds = self.require(split)
        n = len(ds) if limit is None else min(limit, len(ds))
        reader = replace(reader, image_dir=reader.image_dir or self.image_dir(split))
        return [reader.example(self._row(ds, split, i), where(self.spec, split, i)) for i in range(n)]

    def image_dir(self, split: str) -> str:
        """Where the split's image paths start: the folder of the file (or the directory) it came from."""
        files = self.spec.split_files()
        source = Path(files.get(split) or files.get("*") or next(iter(files.values())))
        return str(source if source.is_dir() else source.parent)

    def _row(self, ds: Any, split: str, index: int) -> dict[str, Any]:
        """One row; arrow checks text only when a row is read, so damaged bytes surface here."""
        try:
            return ds[index]
        except UnicodeDecodeError as exc:
            raise TunelabError(f"{where(self.spec, split, index)}: not UTF-8 text ({exc.reason} at byte "
                               f"{exc.start} of a value); save the file as UTF-8") from None


def load_data(spec: DatasetSpec, experiment_dir: str | Path | None, create_split: bool = False) -> LoadedData:
    """The dataset's splits. With `split:`, the split record in experiment_dir is read (or, when
    create_split, written the first time); without an experiment dir the split is made in memory."""
    source = read_source(spec)
    if spec.split is None:
        return LoadedData(spec, dict(source.splits), source.files)
    record_path = split_record_path(spec, experiment_dir) if experiment_dir else None
    indices = _split_indices(spec, source, record_path, create_split)
    rows = source.splits["train"]
    splits = {s: v for s, v in source.splits.items() if s != "train"}
    splits.update({s: rows.select(idx) for s, idx in indices.items()})
    return LoadedData(spec, splits, source.files, record_path)


def split_record_path(spec: DatasetSpec, experiment_dir: str | Path) -> Path:
    """Where a split made by the spec is recorded."""
    return Path(experiment_dir) / DATA_DIR / f"{spec.name}.split.json"


def _split_indices(spec: DatasetSpec, source: SourceData, record_path: Path | None, create: bool) -> dict[str, list]:
    fractions = spec.split
    assert fractions is not None
    if "train" not in source.splits:
        raise TunelabError(f"dataset '{spec.name}': split: needs training rows to split", file=source.files[0].path)
    for s in ("validation", "test"):
        if getattr(fractions, s) > 0 and s in source.splits:
            raise TunelabError(f"dataset '{spec.name}' already has a '{s}' split; drop split.{s}",
                               file=source.files[0].path)
    sources = [asdict(f) for f in source.files]
    if record_path is not None and record_path.is_file():
        record = read_json(record_path)
        if not isinstance(record, dict) or "indices" not in record:
            raise TunelabError("split record is damaged; delete it to split again", file=record_path)
        if [(s["path"], s["sha256"]) for s in record.get("sources", [])] != [(s["path"], s["sha256"]) for s in sources]:
            raise TunelabError(
                f"dataset '{spec.name}' changed since its split was made (sha256 differs): runs trained on the "
                "old split would not be comparable; restore the file, or delete this record to split again",
                file=record_path)
        if record.get("fractions") != fractions.model_dump():
            raise TunelabError(f"the spec's split {fractions.model_dump()} differs from the recorded "
                               f"{record.get('fractions')}; delete this record to split again", file=record_path)
        return record["indices"]
    if record_path is not None and not create:
        raise TunelabError(f"the split of dataset '{spec.name}' was never recorded: run `tunelab scaffold` "
                           "(or `tunelab plan`) first", file=record_path)
    indices = make_split(len(source.splits["train"]), fractions, spec.name)
    if record_path is not None:
        atomic_write_json(record_path, {"dataset": spec.name, "fractions": fractions.model_dump(),
                                        "sources": sources, "indices": indices})
    return indices


def make_split(n: int, fractions: SplitFractions, name: str = "") -> dict[str, list[int]]:
    """Shuffle 0..n-1 with the seed; test first, then validation, the rest train (each sorted)."""
    sizes = {s: max(1, round(n * getattr(fractions, s))) if getattr(fractions, s) > 0 else 0
             for s in ("test", "validation")}
    n_train = n - sum(sizes.values())
    if n_train < 1:
        raise TunelabError(f"dataset '{name}': {n} rows at validation {fractions.validation} / test "
                           f"{fractions.test} leave no training rows", field="split")
    order = list(range(n))
    random.Random(fractions.seed).shuffle(order)
    out: dict[str, list[int]] = {}
    start = 0
    for s in ("test", "validation"):
        if sizes[s]:
            out[s] = sorted(order[start:start + sizes[s]])
            start += sizes[s]
    out["train"] = sorted(order[start:])
    return out
