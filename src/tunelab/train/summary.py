"""summary.json of a finished run: results from metrics.jsonl plus what the run ran on."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tunelab.estimate.batch import effective_batch_size
from tunelab.fsutil import read_jsonl
from tunelab.runconfig import RunConfig
from tunelab.train import status as st
from tunelab.train.checkpoints import complete_epochs
from tunelab.train.metrics import steady_tokens_per_s


def summarize(run_dir: Path, cfg: RunConfig, extra: dict[str, Any]) -> dict[str, Any]:
    """Loss, tokens, throughput (all processes together) and the worst process's peak memory."""
    rows = read_jsonl(run_dir / st.METRICS_FILE)
    train_rows = [r for r in rows if r.get("loss") is not None]
    val_rows = [r for r in rows if r.get("val_loss") is not None]
    last = rows[-1] if rows else {}
    tps = steady_tokens_per_s(rows)
    nonpad_frac = (last.get("nonpad_tokens", 0) / last["tokens"]) if last.get("tokens") else None
    return {
        "run": cfg.name,
        "state": st.COMPLETED,
        "attempt": cfg.attempt,
        "steps": last.get("step"),
        "final_loss": train_rows[-1]["loss"] if train_rows else None,
        "best_loss": min(r["loss"] for r in train_rows) if train_rows else None,
        "final_val_loss": val_rows[-1]["val_loss"] if val_rows else None,
        "best_val_loss": min(r["val_loss"] for r in val_rows) if val_rows else None,
        "tokens": last.get("tokens"),
        "nonpad_tokens": last.get("nonpad_tokens"),
        "nonpad_fraction": round(nonpad_frac, 4) if nonpad_frac is not None else None,
        "tokens_per_s": round(tps, 2) if tps else None,
        "nonpad_tokens_per_s": round(tps * nonpad_frac, 2) if tps and nonpad_frac else None,
        "peak_memory_gib": max((r["peak_memory_gib"] for r in rows), default=None),  # worst process
        "memory_kind": last.get("memory_kind"),
        "checkpoints": [f"epoch_{e}" for e in complete_epochs(run_dir)],
        **extra,
    }


def run_facts(trainer, t, dtype, run_dir: Path, world_size: int, strategy: str | None) -> dict[str, Any]:
    """What the run ran on: processes, batch, parameters, device, library versions."""
    import peft
    import torch
    import transformers
    import trl

    cuda = torch.cuda.is_available()
    trainable, total = trainer.model.get_nb_trainable_parameters()
    return {
        "world_size": world_size,
        "distributed": strategy,
        "effective_batch_size": effective_batch_size(t.batch_size, t.gradient_accumulation_steps, world_size),
        "trainable_params": int(trainable),
        "total_params": int(total),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "gpu_memory_total_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 2) if cuda else None,
        "cpu_threads": torch.get_num_threads(),
        "dtype": str(dtype).removeprefix("torch."),
        "activation_checkpointing": t.gradient_checkpointing,
        "restarts": st.read_status(run_dir).get("restarts", 0),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__, "trl": trl.__version__},
        "pid": os.getpid(),
    }
