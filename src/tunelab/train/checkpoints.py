"""Per-epoch adapter checkpoints (checkpoints/epoch_N/) and the trainer state to resume from.

The trainer keeps its full state (optimizer, scheduler, RNG) under trainer_state/checkpoint-STEP so
a killed job resumes exactly; epoch_N holds what people evaluate and ship: adapter + tokenizer.
A checkpoint is complete only once tunelab's token counters are written into it, which is the last
write of a save: a kill anywhere before leaves a checkpoint that is never resumed from.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from tunelab.train.status import CHECKPOINTS_DIR

COUNTERS_FILE = "tunelab_counters.json"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def epoch_dir(run_dir: str | Path, epoch: int) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR / f"epoch_{epoch}"


def is_complete_checkpoint(path: str | Path) -> bool:
    path = Path(path)
    return all((path / f).is_file() and (path / f).stat().st_size > 0 for f in ADAPTER_FILES)


def complete_epochs(run_dir: str | Path) -> list[int]:
    """Epoch indices whose adapter checkpoint is complete, ascending."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    epochs = []
    for d in root.iterdir():
        if d.is_dir() and d.name.startswith("epoch_") and d.name[6:].isdigit() and is_complete_checkpoint(d):
            epochs.append(int(d.name[6:]))
    return sorted(epochs)


def publish_epoch_checkpoint(src: Path, run_dir: str | Path, epoch: int) -> Path:
    """Copy adapter + tokenizer files from a trainer checkpoint into checkpoints/epoch_N, atomically."""
    dest = epoch_dir(run_dir, epoch)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ADAPTER_FILES + TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, tmp / name)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


def epoch_index(epoch: float | None) -> int:
    """0-based index of the epoch a save at this (fractional) trainer epoch ends."""
    return max(0, math.ceil(round(epoch or 0, 6)) - 1)


def _trainer_checkpoints(state_dir: str | Path, needed: tuple[str, ...]) -> list[Path]:
    """checkpoint-STEP directories holding all the `needed` files, by step ascending."""
    state_dir = Path(state_dir)
    if not state_dir.is_dir():
        return []
    found = []
    for d in state_dir.iterdir():
        step = d.name.removeprefix("checkpoint-")
        if d.is_dir() and step.isdigit() and all((d / f).is_file() for f in needed):
            found.append((int(step), d))
    return [d for _, d in sorted(found)]


def complete_trainer_checkpoints(state_dir: str | Path) -> list[Path]:
    """Checkpoints whose save finished: trainer state and, written last, tunelab's counters."""
    return _trainer_checkpoints(state_dir, ("trainer_state.json", COUNTERS_FILE))


def last_complete_checkpoint(state_dir: str | Path) -> Path | None:
    """The checkpoint a restarted job resumes from: the newest complete one."""
    found = complete_trainer_checkpoints(state_dir)
    return found[-1] if found else None


def last_trainer_checkpoint(state_dir: str | Path) -> Path | None:
    """The newest checkpoint with a trainer state, complete or not (what the retry policy reads)."""
    found = _trainer_checkpoints(state_dir, ("trainer_state.json",))
    return found[-1] if found else None


def republish_missing_epochs(state_dir: str | Path, run_dir: str | Path, upto: Path) -> list[int]:
    """Publish epoch_N again from complete trainer checkpoints up to `upto` where it is missing (a save
    killed between its trainer state and its publish); returns the epochs republished."""
    done = []
    for ckpt in complete_trainer_checkpoints(state_dir):
        if int(ckpt.name.removeprefix("checkpoint-")) > int(upto.name.removeprefix("checkpoint-")):
            break
        epoch = epoch_index(json.loads((ckpt / "trainer_state.json").read_text()).get("epoch"))
        if not is_complete_checkpoint(epoch_dir(run_dir, epoch)):
            publish_epoch_checkpoint(ckpt, run_dir, epoch)
            done.append(epoch)
    return done
