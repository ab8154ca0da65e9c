"""One error type for everything a user can get wrong: it names the file and the field at fault."""

from __future__ import annotations

from pathlib import Path


class TunelabError(Exception):
    """A user-facing error. The CLI prints it as one line and exits non-zero, with no traceback."""

    def __init__(self, message: str, *, file: str | Path | None = None, field: str | None = None):
        self.message = message
        self.file = str(file) if file is not None else None
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.file and self.field:
            where = f"{self.file}: {self.field}: "
        elif self.file:
            where = f"{self.file}: "
        elif self.field:
            where = f"{self.field}: "
        return f"{where}{self.message}"
