"""How every run-directory record meets JSON: the keys on disk are the field names, unknown keys are
kept (a newer writer's file read by older code is written back whole), missing keys read as defaults."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, Self


def plain(value: Any) -> Any:
    """A value as JSON holds it: records and dataclasses become dicts, tuples lists, enums their values."""
    if isinstance(value, JsonRecord) or callable(getattr(value, "to_json", None)):
        return value.to_json()  # a record of its own making (cpuload.LoadWindow) too
    if isinstance(value, Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


@dataclass(kw_only=True)
class JsonRecord:
    """Base of the typed records. `omit_none`: fields written only when they hold a value (a staged run's
    stage, an adopted run's origin), so the files keep exactly the keys they had before records were typed."""

    omit_none: ClassVar[frozenset[str]] = frozenset()
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "extra")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        names = set(cls.field_names())
        known = cls.decode({k: v for k, v in data.items() if k in names})
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

    @classmethod
    def decode(cls, known: dict[str, Any]) -> dict[str, Any]:
        """Nested records from their JSON (a subclass with nested records overrides this)."""
        return known

    def to_json(self, keys: Iterable[str] | None = None, drop_none: bool = False) -> dict[str, Any]:
        """The record as its file holds it; `keys`: only these fields, `drop_none`: only fields with a value
        (a writer that knows only some of them: tunelab adopt)."""
        only = set(keys) if keys is not None else None
        out: dict[str, Any] = {}
        for name in self.field_names():
            value = getattr(self, name)
            if (only is not None and name not in only) or (value is None and (drop_none or name in self.omit_none)):
                continue
            out[name] = plain(value)
        out.update(self.extra)
        return out
