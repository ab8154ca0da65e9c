"""Checkpoints in a run directory, as readers see them: checkpoints/epoch_N (what people evaluate) and
trainer_state/[STAGE/]checkpoint-STEP (what a restarted job resumes from). A trainer checkpoint is complete only once
tunelab's counters are in it, an epoch checkpoint once its adapter files all are (train/checkpoints.py)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tunelab.fsutil import atomic_write_json
from tunelab.rundir.layout import (
    ADAPTER_FILES,
    CHECKPOINTS_DIR,
    COUNTERS_FILE,
    TRAINER_STATE_DIR,
    TRAINER_STATE_FILE,
    epoch_name,
    parse_epoch_name,
    trainer_checkpoint_step,
)


@dataclass
class Counters:
    """tunelab_counters.json: cumulative over the whole run, carried across a resume (and across stages)."""

    tokens: int = 0  # tokens the model processed (padding included)
    nonpad_tokens: int = 0  # real tokens (padding excluded)
    examples: int = 0
    overhead_s: float = 0.0  # time in evaluation and checkpoint saves
    save_s: float = 0.0  # of overhead_s, the checkpoint saves' (each one's publish included)
    saves: int = 0  # checkpoint saves timed
    elapsed_s: float = 0.0  # wall time of training (all attempts)
    data_wait_s: float = 0.0  # time the training loop waited for its next batch (slowest process)

    def add_save(self, seconds: float, saves: int = 1) -> None:
        """Time spent saving (overhead); `saves`: the checkpoints it completes (0: more time on one counted)."""
        self.overhead_s += seconds
        self.save_s += seconds
        self.saves += saves

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Counters:
        return cls(**data)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def read_counters(checkpoint: Path) -> Counters:
    """The counters of a complete trainer checkpoint."""
    return Counters.from_json(json.loads((checkpoint / COUNTERS_FILE).read_text()))


def write_counters(checkpoint: Path, counters: Counters) -> Path:
    """Written last: it completes the checkpoint."""
    return atomic_write_json(checkpoint / COUNTERS_FILE, counters.to_json())


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR


def epoch_dir(run_dir: str | Path, epoch: int) -> Path:
    return checkpoints_dir(run_dir) / epoch_name(epoch)


def is_complete_checkpoint(path: str | Path) -> bool:
    """An adapter checkpoint with every adapter file, none empty."""
    path = Path(path)
    return all((path / f).is_file() and (path / f).stat().st_size > 0 for f in ADAPTER_FILES)


def complete_epochs(run_dir: str | Path) -> list[int]:
    """Epoch indices whose adapter checkpoint is complete, ascending."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [(parse_epoch_name(d.name), d) for d in root.iterdir() if d.is_dir()]
    return sorted(e for e, d in found if e is not None and is_complete_checkpoint(d))


def stage_state_dir(run_dir: str | Path, stage: str | None) -> Path:
    """Where a stage keeps its trainer state: trainer_state/STAGE/ (an unstaged run: trainer_state/)."""
    base = Path(run_dir) / TRAINER_STATE_DIR
    return base / stage if stage else base


def trainer_checkpoints(state_dir: str | Path, needed: tuple[str, ...] = ()) -> list[Path]:
    """checkpoint-STEP directories holding all the `needed` files, by step ascending."""
    state_dir = Path(state_dir)
    if not state_dir.is_dir():
        return []
    found = []
    for d in state_dir.iterdir():
        step = trainer_checkpoint_step(d.name)
        if d.is_dir() and step is not None and all((d / f).is_file() for f in needed):
            found.append((step, d))
    return [d for _, d in sorted(found)]


def complete_trainer_checkpoints(state_dir: str | Path) -> list[Path]:
    """Checkpoints whose save finished: trainer state and, written last, tunelab's counters."""
    return trainer_checkpoints(state_dir, (TRAINER_STATE_FILE, COUNTERS_FILE))


def last_complete_checkpoint(state_dir: str | Path) -> Path | None:
    """The checkpoint a restarted job resumes from: the newest complete one."""
    found = complete_trainer_checkpoints(state_dir)
    return found[-1] if found else None


def last_trainer_checkpoint(state_dir: str | Path) -> Path | None:
    """The newest checkpoint with a trainer state, complete or not (what the retry policy reads)."""
    found = trainer_checkpoints(state_dir, (TRAINER_STATE_FILE,))
    return found[-1] if found else None


def checkpoint_step(checkpoint: Path) -> int:
    """STEP of a trainer checkpoint directory."""
    step = trainer_checkpoint_step(checkpoint.name)
    if step is None:
        raise ValueError(f"not a trainer checkpoint: {checkpoint}")
    return step
