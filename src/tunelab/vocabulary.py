"""The base of a vocabulary whose words are stored in files (summary.json, run.yaml, the ledger): a file
written by another tunelab version may hold a word this one does not know, and reading it must not fail."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Self


class Vocabulary(StrEnum):
    """A StrEnum with a lenient reader for stored words."""

    @classmethod
    def read(cls, value: Any) -> Self | None:
        """The member a stored value names (a subclass's `_missing_` may map old words); None for no value or a
        word this version does not know."""
        try:
            return cls(value) if value is not None else None
        except ValueError:
            return None
