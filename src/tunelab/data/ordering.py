"""`training.order` as a permutation of the training rows: the pure part, shared by the job (which feeds
it, train/ordering.py) and the plan (which checks a by_field order's field before any job starts)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tunelab.data.splits import load_data
from tunelab.errors import TunelabError
from tunelab.spec.training import ByField


def order_name(order: str | ByField) -> str:
    return f"by_field:{order.by_field}" if isinstance(order, ByField) else order


def order_text(order: str | ByField) -> str:
    """An order as the spec writes it, for a reader (plan.md, the report): shuffled, …, by_field: NAME."""
    return f"by_field: {order.by_field}" if isinstance(order, ByField) else order


def fixed_order(order: str | ByField, lengths: Sequence[int], field_values: Sequence[Any] | None = None
                ) -> list[int] | None:
    """The permutation of a non-random order (None for shuffled). Sorting is stable: ties keep file order."""
    n = len(lengths)
    if order == "shuffled":
        return None
    if order == "as_given":
        return list(range(n))
    if order == "by_length":
        return sorted(range(n), key=lambda i: lengths[i])
    assert isinstance(order, ByField)
    if field_values is None or len(field_values) != n:
        raise TunelabError("the training split's rows do not match the trained examples one to one",
                           field=f"training.order.by_field: {order.by_field}")
    missing = [i for i, v in enumerate(field_values) if v is None]
    if missing:
        raise TunelabError(f"train row {missing[0]} has no value for {order.by_field!r} "
                           f"({len(missing)} row(s) without it)", field=f"training.order.by_field: {order.by_field}")
    try:
        return sorted(range(n), key=lambda i: field_values[i])
    except TypeError:
        raise TunelabError(f"values of {order.by_field!r} cannot be ordered (mixed types)",
                           field=f"training.order.by_field: {order.by_field}") from None


def field_values(cfg, name: str) -> list[Any]:
    """One field of every train row, read through the same load_data the examples come from."""
    ds = load_data(cfg.dataset, cfg.experiment_dir).require("train")
    if name not in ds.column_names:
        raise TunelabError(f"the training data has no field {name!r} (fields: {', '.join(ds.column_names)})",
                           field=f"training.order.by_field: {name}")
    return list(ds[name])
