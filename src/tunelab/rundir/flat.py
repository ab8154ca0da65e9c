"""A run's nested config as flat `section.field` → text pairs: what trackers take as params
(export/records.py) and what `tunelab compare` sets side by side (report/compare.py)."""

from __future__ import annotations

import json
from typing import Any


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested config → {"training.learning_rate": "0.002", ...}; lists as JSON; None left out."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif data is not None:
        out[prefix] = json.dumps(data) if isinstance(data, (list, tuple)) else str(data)
    return out
