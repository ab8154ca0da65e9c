"""Runs trained elsewhere, read into one typed record each: an HF Trainer output dir (TRL, axolotl,
LLaMA-Factory: checkpoint-N/ with adapters, trainer_state.json) or a torchtune output dir (epoch_N/ with
adapters, the job's slurm-*.out). Only read: a source directory is never written to."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.ingest.hf_trainer import CHECKPOINT, STATE, parse_trainer_dir
from tunelab.ingest.torchtune import LogParseError, parse_torchtune_log
from tunelab.rundir.memory import MemoryKind
from tunelab.rundir.metrics import MetricRow

EPOCH_DIR = re.compile(r"^epoch_(\d+)$")
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


@dataclass
class AdoptedRun:
    """What a run left behind, in tunelab's terms."""

    name: str
    source: Path
    kind: str  # "hf-trainer" | "torchtune"
    rows: list[MetricRow]  # metrics.jsonl rows: step, epoch, loss / val_loss
    steps: int
    epochs: float | None
    duration_s: float | None
    tokens_per_s: float | None
    peak_memory_gib: float | None
    memory_kind: MemoryKind | None
    checkpoints: list[Path]  # adapter dirs in training order; their index becomes epoch_N
    config: dict[str, Any]  # training facts that may differ between runs (lora_rank, learning_rate, ...)
    base_model: str | None
    problems: list[str] = field(default_factory=list)  # checkpoints skipped, and why


def adapter_problem(d: Path) -> str | None:
    """Why this folder is not a loadable PEFT adapter (None: it is)."""
    if not (d / "adapter_config.json").is_file():
        return f"{d}: no adapter_config.json"
    if not any((d / w).is_file() for w in ADAPTER_WEIGHTS):
        return f"{d}: no adapter weights ({' or '.join(ADAPTER_WEIGHTS)})"
    return None


def _adapters(dirs: list[Path]) -> tuple[list[Path], list[str]]:
    good, problems = [], []
    for d in dirs:
        problem = adapter_problem(d)
        (problems.append(problem) if problem else good.append(d))
    return good, problems


def read_source(path: Path) -> AdoptedRun:
    """An HF Trainer dir (trainer_state.json here or in checkpoint-N/) or a torchtune dir (epoch_N/)."""
    path = path.resolve()
    if not path.is_dir():
        raise TunelabError("not a directory", file=path)
    if (path / STATE).is_file() or any((c / STATE).is_file() for c in path.glob("checkpoint-*")):
        return _hf(path)
    if any(EPOCH_DIR.match(p.name) for p in path.iterdir() if p.is_dir()):
        return _torchtune(path)
    raise TunelabError("neither an HF Trainer output dir (trainer_state.json) nor a torchtune output dir "
                       "(epoch_N/ folders)", file=path)


def _numbered(path: Path, find: Callable[[str], re.Match[str] | None]) -> list[Path]:
    """The folders of `path` whose name `find` matches, in the order of the number it captures."""
    found = [(int(m.group(1)), p) for p in path.iterdir() if p.is_dir() and (m := find(p.name)) is not None]
    return [p for _, p in sorted(found, key=lambda pair: pair[0])]


def _hf(path: Path) -> AdoptedRun:
    try:
        run = parse_trainer_dir(path)
    except LogParseError as exc:
        raise TunelabError(str(exc), file=path) from None
    ckpts = _numbered(path, CHECKPOINT.search)
    good, problems = _adapters(ckpts)
    rows = [MetricRow(step=s, loss=v) for s, v in run.losses] + [MetricRow(step=s, val_loss=v) for s, v in run.val_losses]
    ad = run.adapter
    config = {"lora_rank": ad.get("r"), "lora_alpha": ad.get("lora_alpha"), "batch_size": run.batch_size,
              "lora_target_modules": sorted(ad["target_modules"]) if isinstance(ad.get("target_modules"), list)
              else ad.get("target_modules")}
    return AdoptedRun(path.name, path, "hf-trainer", sorted(rows, key=lambda r: r.step or 0), run.steps, run.epochs,
                      run.runtime_s, run.tokens_per_s, run.peak_memory_gib,
                      MemoryKind.CUDA_MAX_ALLOCATED if run.peak_memory_gib else None, good,
                      {k: v for k, v in config.items() if v is not None}, ad.get("base_model_name_or_path"), problems)


def _torchtune(path: Path) -> AdoptedRun:
    logs = sorted(path.glob("slurm-*.out")) + sorted(path.glob("*.log"))
    if not logs:
        raise TunelabError("a torchtune output dir without its log (slurm-*.out): no metrics to adopt", file=path)
    try:
        parsed = parse_torchtune_log(logs[-1].read_text(encoding="utf-8", errors="replace"))
    except LogParseError as exc:
        raise TunelabError(f"{logs[-1].name}: {exc}", file=path) from None
    epochs = _numbered(path, EPOCH_DIR.match)
    good, problems = _adapters(epochs)
    cfg, model_cfg = parsed.config, parsed.config.get("model")
    model: dict[str, Any] = model_cfg if isinstance(model_cfg, dict) else {}
    rows = [MetricRow(step=step, epoch=epoch, loss=loss) for epoch, step, loss in parsed.step_losses]
    if "val_loss" in parsed.summary:
        rows.append(MetricRow(step=parsed.steps, val_loss=parsed.summary["val_loss"]))
    opt_cfg = cfg.get("optimizer")
    opt: dict[str, Any] = opt_cfg if isinstance(opt_cfg, dict) else {}
    config = {"lora_rank": model.get("lora_rank") or cfg.get("lora_rank"), "lora_alpha": model.get("lora_alpha"),
              "batch_size": cfg.get("batch_size"), "learning_rate": opt.get("lr"),
              "gradient_accumulation_steps": cfg.get("gradient_accumulation_steps"), "epochs": cfg.get("epochs")}
    tps = parsed.summary.get("tokens_per_second_per_gpu")
    return AdoptedRun(path.name, path, "torchtune", rows, parsed.steps, cfg.get("epochs"),
                      round(parsed.steps / parsed.steps_per_s, 1) if parsed.steps_per_s else None, tps,
                      *parsed.training_peak(), good,
                      {k: v for k, v in config.items() if v is not None}, None, problems)
