"""What one checkpoint save costs: measured where the history has runs of this model on this device (summary.json
`save_s`), else assumed from the bytes it writes."""

from __future__ import annotations

from dataclasses import dataclass
from statistics import median

from tunelab.catalog import GPU, Architecture, resolve_architecture
from tunelab.estimate.memory import full_module_params, lora_params
from tunelab.forecast.speedhistory import device_key, same_device
from tunelab.ledger.history import HistoryRun
from tunelab.rundir.config import RunConfig

SAVE_FIXED_S = 1.0  # assumed: a trainer checkpoint's fixed cost (files, RNG, trainer_state.json)
SAVE_BYTES_PER_S = 500e6  # assumed: local or parallel filesystem write speed
SAVED_BYTES_PER_PARAM = 12  # fp32 trainable weight + AdamW's two fp32 moments


@dataclass(frozen=True)
class SaveCost:
    """Seconds one save takes, in words where that came from, and whether runs measured it."""

    seconds: float
    source: str
    measured: bool


def _assumed_s(cfg: RunConfig, arch: Architecture) -> float:
    """A fixed part + the trainable weights and their optimizer state at SAVE_BYTES_PER_S."""
    t = cfg.training
    assert t is not None
    targets = tuple(t.lora_target_modules) if isinstance(t.lora_target_modules, list) else t.lora_target_modules
    params = lora_params(arch, t.lora_rank, targets) + full_module_params(arch, tuple(t.modules_to_save))
    return SAVE_FIXED_S + params * SAVED_BYTES_PER_PARAM / SAVE_BYTES_PER_S


def save_cost(cfg: RunConfig, gpu: GPU | None, history: list[HistoryRun]) -> SaveCost:
    """The median save of this model's runs on this device (any threads: saving is disk work), else assumed."""
    arch = resolve_architecture(cfg.model.path)
    saved = [r.save_s for r in history
             if r.save_s is not None and same_device(r, gpu, None) and r.of_architecture(arch)]
    if saved:
        return SaveCost(median(saved), f"save ≈ {median(saved):.2f} s (measured: the median of {len(saved)} "
                        f"run(s) of this model on {device_key(gpu)})", True)
    seconds = _assumed_s(cfg, arch)
    return SaveCost(seconds, f"save ≈ {seconds:.1f} s (assumed: {SAVE_FIXED_S:.0f} s + trainable state at "
                    f"{SAVE_BYTES_PER_S / 1e6:.0f} MB/s)", False)
