"""Curriculum ordering (`training.order`) and the record of the order each epoch really used: `shuffled` keeps the
trainer's seeded sampler, every other order is a fixed permutation (FixedOrderSampler). The indices are recorded as
drawn (`<run>/data_order.jsonl`), so the file states what the trainer was fed."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from torch.utils.data import Sampler

from tunelab.data.ordering import field_values, fixed_order, order_name
from tunelab.errors import TunelabError
from tunelab.rundir.order import OrderRecord, write_orders
from tunelab.spec.training import ByField, TrainingConfig

RECORD_ALL_UP_TO = 100_000  # longer orders are recorded as their hash and first indices
FIRST_INDICES = 1000


def order_for(t: TrainingConfig, cfg, train_dataset) -> list[int] | None:
    """The fixed permutation of the trainer's train dataset for t.order (None: shuffled)."""
    if t.order != "shuffled" and t.packing:
        raise TunelabError("a curriculum order needs packing: false", field="training.order")
    values = field_values(cfg, t.order.by_field) if isinstance(t.order, ByField) else None
    lengths = [len(x) for x in train_dataset["input_ids"]] if t.order != "shuffled" else []
    return fixed_order(t.order, lengths, values)


class FixedOrderSampler(Sampler[int]):
    """Yields the same given permutation every epoch."""

    def __init__(self, indices: list[int]):
        self.indices = indices

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def record_draws(sampler: Sampler, on_order: Callable[[list[int]], None]) -> None:
    """Make `sampler` report every order it yields, by swapping its class, so the prepared sampler is what runs."""
    base = type(sampler)

    def __iter__(self):
        order = [int(i) for i in base.__iter__(self)]
        on_order(order)
        return iter(order)

    sampler.__class__ = type(f"Recorded{base.__name__}", (base,), {"__iter__": __iter__})


def order_record(epoch: int, order: str | ByField, seed: int, indices: list[int]) -> OrderRecord:
    digest = hashlib.sha256(json.dumps(indices).encode()).hexdigest()
    full = len(indices) <= RECORD_ALL_UP_TO
    return OrderRecord(epoch=epoch, order=order_name(order), seed=seed if order == "shuffled" else None,
                       examples=len(indices), sha256=digest, indices=indices if full else indices[:FIRST_INDICES],
                       complete=full)


class OrderLog:
    """data_order.jsonl as the main process holds it, each new order replacing the file atomically."""

    def __init__(self, run_dir: Path, records: list[OrderRecord]):
        self.run_dir = run_dir
        self.records = records

    def append(self, record: OrderRecord) -> None:
        """Add one epoch's order; a resumed epoch that drew the same order again is not written twice."""
        if any(r.epoch == record.epoch and r.sha256 == record.sha256 for r in self.records):
            return
        self.records.append(record)
        write_orders(self.run_dir, self.records)
