"""Checkpoint verification: which epoch directories exist, and are their files there and non-empty."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tunelab.models.check import TOKENIZER_FILES  # any one of them makes a loadable tokenizer
from tunelab.rundir.checkpoints import checkpoints_dir
from tunelab.rundir.layout import ADAPTER_FILES, parse_epoch_name


@dataclass
class EpochCheck:
    epoch: int
    path: Path
    files: dict[str, int] = field(default_factory=dict)  # name -> bytes
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def adapter_bytes(self) -> int:
        return self.files.get("adapter_model.safetensors", 0)

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())


def verify_checkpoints(run_dir: str | Path) -> list[EpochCheck]:
    """One check per checkpoints/epoch_N directory, ascending by N."""
    root = checkpoints_dir(run_dir)
    checks: list[EpochCheck] = []
    if not root.is_dir():
        return checks
    dirs = [(e, d) for d in root.iterdir() if d.is_dir() and (e := parse_epoch_name(d.name)) is not None]
    for epoch, d in sorted(dirs):
        c = EpochCheck(epoch=epoch, path=d)
        c.files = {p.name: p.stat().st_size for p in d.iterdir() if p.is_file()}
        for req in ADAPTER_FILES:
            if req not in c.files:
                c.problems.append(f"{req} missing")
            elif c.files[req] == 0:
                c.problems.append(f"{req} is empty (0 bytes)")
        if not any(t in c.files for t in TOKENIZER_FILES):
            c.problems.append("tokenizer missing")
        c.problems += [f"{n} is empty (0 bytes)" for n, size in c.files.items()
                       if size == 0 and n not in ADAPTER_FILES]
        checks.append(c)
    return checks
