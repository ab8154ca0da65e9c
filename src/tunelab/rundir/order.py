"""data_order.jsonl: the order each epoch really drew, one record per epoch (the sampler reports it as it
yields it: train/ordering.py). Replaced atomically, a few lines per run."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.fsutil import atomic_write_text, read_jsonl
from tunelab.rundir.layout import ORDER_FILE
from tunelab.rundir.record import JsonRecord


@dataclass(kw_only=True)
class OrderRecord(JsonRecord):
    omit_none = frozenset({"stage"})

    epoch: int = 0  # global epoch (a staged run counts on across stages)
    order: str | None = None  # shuffled | as_given | by_length | by_field:NAME
    seed: int | None = None  # the sampler's seed (shuffled only)
    examples: int | None = None
    sha256: str | None = None  # of the whole index list
    indices: list[int] = field(default_factory=list)  # all of them, or the first ones when not `complete`
    complete: bool | None = None
    stage: str | None = None  # a staged run: the stage that drew it


def read_orders(run_dir: str | Path) -> list[OrderRecord]:
    return [OrderRecord.from_json(r) for r in read_jsonl(Path(run_dir) / ORDER_FILE)]


def write_orders(run_dir: str | Path, records: Iterable[OrderRecord]) -> Path:
    return atomic_write_text(Path(run_dir) / ORDER_FILE, "".join(json.dumps(r.to_json()) + "\n" for r in records))
