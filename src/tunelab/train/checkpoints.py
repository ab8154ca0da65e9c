"""Per-epoch adapter checkpoints (checkpoints/epoch_N/) and the trainer state to resume from.

The trainer keeps its full state (optimizer, scheduler, RNG) under trainer_state/checkpoint-STEP so
a killed job resumes exactly; epoch_N holds what people evaluate and ship: adapter + tokenizer.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tunelab.train.status import CHECKPOINTS_DIR

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


def last_trainer_checkpoint(state_dir: str | Path) -> Path | None:
    """The newest checkpoint-STEP directory that finished saving (has trainer_state.json)."""
    state_dir = Path(state_dir)
    if not state_dir.is_dir():
        return None
    candidates = []
    for d in state_dir.iterdir():
        step = d.name.removeprefix("checkpoint-")
        if d.is_dir() and step.isdigit() and (d / "trainer_state.json").is_file():
            candidates.append((int(step), d))
    return max(candidates)[1] if candidates else None
