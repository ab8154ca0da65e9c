"""Writing checkpoints: per-epoch adapter checkpoints (checkpoints/epoch_N/) published from the trainer state, and the
retention of trainer states (reading them: tunelab.rundir.checkpoints).

The trainer keeps its full state under trainer_state/checkpoint-STEP so a killed job resumes exactly; epoch_N holds what
people evaluate and ship. A checkpoint is complete only once tunelab's token counters, the last write of a save, are in
it: a kill before leaves one never resumed from. Retention deletes only after a complete save."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from tunelab.fsutil import space_guard
from tunelab.rundir.checkpoints import (
    checkpoint_step,
    checkpoints_dir,
    complete_trainer_checkpoints,
    epoch_dir,
    last_complete_checkpoint,
    trainer_checkpoints,
)
from tunelab.rundir.layout import ADAPTER_FILES, TOKENIZER_FILES, TRAINER_STATE_FILE


def publish_epoch_checkpoint(src: Path, run_dir: str | Path, epoch: int) -> Path:
    """Copy adapter + tokenizer into checkpoints/epoch_N atomically; a full disk raises NoSpaceError, no half copy."""
    dest = epoch_dir(run_dir, epoch)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    names = [name for name in ADAPTER_FILES + TOKENIZER_FILES if (src / name).is_file()]
    try:
        with space_guard(dest, sum((src / name).stat().st_size for name in names)):
            tmp.mkdir(parents=True)
            for name in names:
                shutil.copy2(src / name, tmp / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


def at_epoch_end(epoch: float | None, step: int, max_steps: int) -> bool:
    """Does a save here end an epoch (or a max_steps run)? Those publish epoch_N; the others only resume."""
    whole = epoch is not None and round(epoch) >= 1 and abs(epoch - round(epoch)) < 1e-6
    return whole or (max_steps > 0 and step >= max_steps)


def checkpoint_at_epoch_end(ckpt: Path) -> bool:
    """at_epoch_end for a trainer checkpoint on disk, from its trainer_state.json."""
    try:
        state = json.loads((ckpt / TRAINER_STATE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return at_epoch_end(state.get("epoch"), int(state.get("global_step") or 0), int(state.get("max_steps") or 0))


def epoch_index(epoch: float | None) -> int:
    """0-based index of the epoch a save at this (fractional) trainer epoch ends."""
    return max(0, math.ceil(round(epoch or 0, 6)) - 1)


def prune_trainer_checkpoints(state_dir: str | Path, keep: int | None) -> list[Path]:
    """Delete trainer states no longer needed, once a save is complete: the newest complete one always stays; keep=N
    keeps the N newest, default every epoch end and mid-epoch ones while newest; a kill's incomplete leftovers go too.
    Returns what was deleted."""
    complete = complete_trainer_checkpoints(state_dir)
    if not complete:
        return []
    newest = checkpoint_step(complete[-1])
    kept = set(complete[-keep:]) if keep else {c for c in complete if checkpoint_at_epoch_end(c)} | {complete[-1]}
    dropped = []
    for d in trainer_checkpoints(state_dir):
        if checkpoint_step(d) < newest and d not in kept:
            shutil.rmtree(d, ignore_errors=True)
            dropped.append(d)
    return dropped


def drop_unfinished_saves(state_dir: str | Path, run_dir: str | Path) -> list[Path]:
    """After a save that did not fit: delete what it left (checkpoints without counters, half-copied epoch dirs) so the
    space is free and the newest complete checkpoint stays the resume point. Returns what was deleted."""
    last = last_complete_checkpoint(state_dir)
    after = checkpoint_step(last) if last else -1
    dropped = [d for d in trainer_checkpoints(state_dir) if checkpoint_step(d) > after]
    root = checkpoints_dir(run_dir)
    dropped += [d for d in root.glob(".epoch_*.tmp")] if root.is_dir() else []
    for d in dropped:
        shutil.rmtree(d, ignore_errors=True)
    return dropped
