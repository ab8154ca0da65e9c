"""Output directories of the Hugging Face Trainer (TRL, axolotl, LLaMA-Factory) read into a past run:
trainer_state.json's log history, adapter_config.json, the results files and the model's config.json where present. The
run root's state wins, else the latest checkpoint-N/'s; a damaged state raises LogParseError with the file and reason,
so nothing is half-imported."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.ingest.torchtune import LogParseError

STATE = "trainer_state.json"
CHECKPOINT = re.compile(r"checkpoint-(\d+)$")
GIB = 2**30


@dataclass
class TrainerRun:
    root: Path
    state_path: Path
    steps: int
    epochs: float | None
    batch_size: int | None
    losses: list[tuple[int, float]]  # (step, loss)
    val_losses: list[tuple[int, float]]
    runtime_s: float | None
    tokens_per_s: float | None
    tokens: float | None
    peak_memory_gib: float | None
    adapter: dict[str, Any] = field(default_factory=dict)
    model_config: dict[str, Any] | None = None


def _checkpoints(root: Path) -> list[Path]:
    found = [p for p in root.iterdir() if p.is_dir() and CHECKPOINT.search(p.name)]
    return sorted(found, key=lambda p: int(p.name.rsplit("-", 1)[1]))  # checkpoint-STEP


def find_trainer_dirs(paths: list[Path]) -> list[Path]:
    """Run roots below these paths: a dir with trainer_state.json, or whose checkpoint-N/ dirs have one."""
    roots: set[Path] = set()
    for p in paths:
        if not p.is_dir():
            continue
        for state in p.rglob(STATE):
            parent = state.parent
            roots.add(parent.parent if CHECKPOINT.search(parent.name) else parent)
    return sorted(roots)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LogParseError(f"{path}: damaged {what} ({type(exc).__name__}: {exc})") from None


def _first(root: Path, name: str) -> Path | None:
    """The run root's file, else the latest checkpoint's."""
    return next((d / name for d in [root, *reversed(_checkpoints(root))] if (d / name).is_file()), None)


def parse_trainer_dir(root: Path) -> TrainerRun:
    state_path = _first(root, STATE)
    if state_path is None:
        raise LogParseError(f"{root}: no {STATE} (not an HF Trainer output dir)")
    state = _read_json(state_path, STATE)
    logs = state.get("log_history") if isinstance(state, dict) else None
    if not isinstance(logs, list):
        raise LogParseError(f"{state_path}: no log_history")
    losses = [(int(e.get("step", 0)), float(e["loss"])) for e in logs if isinstance(e, dict) and "loss" in e]
    if not losses:
        raise LogParseError(f"{state_path}: no training losses in log_history (the run logged nothing or failed early)")
    vals = [(int(e.get("step", 0)), float(e["eval_loss"])) for e in logs if isinstance(e, dict) and "eval_loss" in e]
    final = {k: v for e in logs if isinstance(e, dict) for k, v in e.items()}  # last value of every key
    results = {}
    for name in ("all_results.json", "train_results.json"):
        if (root / name).is_file():
            results.update(_read_json(root / name, name))
    final.update({k: v for k, v in results.items() if k not in final})
    tokens = final.get("num_tokens")
    runtime = final.get("train_runtime")
    tps = final.get("train_tokens_per_second") or (tokens / runtime if tokens and runtime else None)
    adapter_path = _first(root, "adapter_config.json")
    config_path = root / "config.json"
    return TrainerRun(
        root=root, state_path=state_path, steps=int(state.get("global_step") or losses[-1][0]),
        epochs=state.get("epoch") or state.get("num_train_epochs"), batch_size=state.get("train_batch_size"),
        losses=losses, val_losses=vals, runtime_s=runtime, tokens_per_s=tps, tokens=tokens,
        peak_memory_gib=_peak(final),
        adapter=_read_json(adapter_path, "adapter_config.json") if adapter_path else {},
        model_config=_read_json(config_path, "config.json") if config_path.is_file() else None)


def _peak(final: dict[str, Any]) -> float | None:
    """The Trainer's memory metrics (skip_memory_metrics=False): init + training delta + peak; absent by default."""
    peaked = final.get("train_mem_gpu_peaked_delta")
    if peaked is None:
        return None
    base = (final.get("init_mem_gpu_alloc_delta") or 0) + (final.get("train_mem_gpu_alloc_delta") or 0)
    return round((base + peaked) / GIB, 3)
