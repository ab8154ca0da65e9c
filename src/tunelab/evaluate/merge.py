"""Adapters vLLM cannot serve as adapters (full `modules_to_save`, DoRA, a grown vocabulary), merged into a model
directory of their own (`<experiment>/eval/vllm-merged/`) and served as a base; what vLLM cannot serve at all (a VLM,
LoRA on parameters) goes to the HF path, each with its reason (vllm_eval.py)."""

from __future__ import annotations

import json
from pathlib import Path

from tunelab.evaluate.hf import load_model
from tunelab.fsutil import atomic_write_text
from tunelab.models.vlm import is_vision_language

HEAD_MODULES = {"score", "classifier", "classification_head"}  # what vLLM accepts in modules_to_save
MERGED_DIR = "vllm-merged"
MERGED_STAMP = ".tunelab-merged.json"


def adapter_config(adapter: Path) -> dict:
    return dict(json.loads((adapter / "adapter_config.json").read_text()))


def unservable(adapter: Path) -> str | None:
    """Why vLLM cannot serve this adapter unmerged (None: it can)."""
    config = adapter_config(adapter)
    saved = sorted(set(config.get("modules_to_save") or ()) - HEAD_MODULES)
    if saved:
        return f"modules_to_save {saved} (vLLM serves only a classifier head in full)"
    if config.get("use_dora"):
        return "DoRA (vLLM serves plain LoRA)"
    if config.get("target_parameters") or config.get("trainable_token_indices"):
        return "LoRA on parameters or trainable tokens (vLLM serves LoRA on modules)"
    return None


def not_mergeable(base: Path) -> str | None:
    """Why a checkpoint of this base goes to the HF path rather than to a merged vLLM model (None: it merges)."""

    if is_vision_language(str(base)):
        return "a vision-language model (tunelab's vLLM path serves text models)"
    return None


def merged_dir(experiment_dir: Path, run: str, label: str) -> Path:
    return experiment_dir / "eval" / MERGED_DIR / f"{run}-{label}"


def merge_adapter(base: Path, adapter: Path, out: Path, dtype: str) -> Path:
    """The base with the adapter merged, saved to `out` with its tokenizer; reused while the adapter is unchanged."""
    stamp = {"base": str(base), "adapter": str(adapter), "dtype": dtype,
             "files": {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(adapter.iterdir())
                       if p.is_file()}}
    if (out / MERGED_STAMP).is_file() and json.loads((out / MERGED_STAMP).read_text()) == stamp:
        return out

    import torch

    model, tokenizer = load_model(base, adapter, getattr(torch, dtype), "cpu")
    merged = model.merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    atomic_write_text(out / MERGED_STAMP, json.dumps(stamp, indent=1) + "\n")
    return out
