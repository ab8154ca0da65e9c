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


class NoSpaceError(TunelabError):
    """A write the filesystem (or the user's quota) had no room for. One line naming the path, the bytes the
    write needed and those free, and what to do; nothing half-written is left as if it were complete
    (fsutil.space_guard and the writers that use it)."""

    def __init__(self, path: str | Path, needed: int | None, free: int | None, sizes: str,
                 next_step: str = "free space, then run the command again"):
        self.path = str(path)
        self.needed = needed
        self.free = free
        self.sizes = sizes  # "needs ~3.1 MiB, 412.0 KiB free", written by fsutil (the one byte formatter)
        self.next_step = next_step
        super().__init__(f"no space left on {self.path} ({sizes}): {next_step}")
