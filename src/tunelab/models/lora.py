"""The LoRA adapter a run trains, as PEFT is told about it: one place for the trainer (train/runner.py)
and the memory simulator (estimate/simulator/), so the step that is simulated is the step that runs."""

from __future__ import annotations

from typing import Any


def lora_config(rank: int, alpha: float, dropout: float, targets: list[str] | tuple[str, ...] | str,
                modules_to_save: list[str] | tuple[str, ...] = ()) -> Any:
    """peft.LoraConfig for a causal LM; `targets` is a list of module names or "all-linear"."""
    from peft import LoraConfig

    return LoraConfig(
        r=rank,
        # peft annotates lora_alpha as int, but only divides by it (scaling = alpha / r): a float alpha is valid
        lora_alpha=alpha,  # type: ignore[arg-type]
        lora_dropout=dropout,
        target_modules=targets if isinstance(targets, str) else list(targets),
        modules_to_save=list(modules_to_save) or None,
        task_type="CAUSAL_LM",
    )
