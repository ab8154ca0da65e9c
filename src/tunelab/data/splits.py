"""Load a dataset file and check it has what training and evaluation need, before any job starts."""

from __future__ import annotations

import json
from pathlib import Path

from tunelab.errors import TunelabError

SPLITS = ("train", "validation", "test")


def load_splits(path: str | Path, input_field: str = "input", output_field: str = "output") -> dict[str, list[dict]]:
    """Return {split: examples}; raise naming the file and the split/field when anything is missing."""
    path = Path(path)
    if not path.is_file():
        raise TunelabError("dataset file not found", file=path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TunelabError(f"not valid JSON: {exc}", file=path) from None
    if not isinstance(data, dict):
        raise TunelabError("must be a JSON object with 'train', 'validation' and 'test' lists", file=path)
    out: dict[str, list[dict]] = {}
    for split in SPLITS:
        if split not in data:
            raise TunelabError(f"missing the '{split}' split (needs {', '.join(SPLITS)})", file=path, field=split)
        rows = data[split]
        if not isinstance(rows, list) or not rows:
            raise TunelabError("must be a non-empty list of examples", file=path, field=split)
        for i, row in enumerate(rows):
            for fld in (input_field, output_field):
                if not isinstance(row, dict) or fld not in row:
                    raise TunelabError(f"example has no '{fld}' field", file=path, field=f"{split}[{i}]")
                if not isinstance(row[fld], str):
                    raise TunelabError(f"'{fld}' must be a string", file=path, field=f"{split}[{i}].{fld}")
        out[split] = rows
    return out
