"""What a run will write to disk, predicted, so plan can say before any job whether the sweep fits its filesystem
instead of a job finding out at its third checkpoint.

The adapter file is exact (safetensors' header built as safetensors builds it, PEFT's fp32 adapters, modules saved
whole); optimizer.pt is AdamW's two moments plus torch's zip overhead per tensor; how many checkpoints stay is
train/checkpoints.py's rule; logs are estimates per row, line and sample, measured on tunelab's tiny runs."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from tunelab.catalog import Architecture, resolve_architecture
from tunelab.estimate.batch import optimizer_steps
from tunelab.rundir.config import RunConfig
from tunelab.rundir.estimate import DiskEstimate, RunEstimate
from tunelab.rundir.layout import TOKENIZER_FILES
from tunelab.spec import TrainingConfig

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
SAFETENSORS_DTYPE = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
DTYPE_ORDER = {"F16": 0, "BF16": 1, "F32": 2}  # safetensors' Dtype enum order: larger first in the file
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")

# Measured on tunelab's tiny runs (tests/e2e/test_disk_full.py checks them against a real checkpoint):
OPTIMIZER_BYTES_PER_TENSOR = 840  # torch.save's zip records of a tensor's two moments and its step, and pickle
OPTIMIZER_FIXED_BYTES = 1_500
STATE_FIXED_BYTES = 32_000  # scheduler.pt, rng_state.pth, training_args.bin, README.md, adapter_config.json, counters
TRAINER_LOG_ENTRY_BYTES = 180  # trainer_state.json's log_history grows by one entry per logged row
ADAPTER_CONFIG_BYTES = 1_700
METRICS_ROW_BYTES = 340  # one metrics.jsonl row
LOG_LINE_BYTES = 90  # one progress line of the job's log
RUN_FILES_BYTES = 12_000  # run.yaml, job script, status.json, summary.json, packing.json, stages.json
GPU_SAMPLE_BYTES = 220  # one gpu_samples.jsonl row, every 5 s of a GPU job
EVAL_LOG_FIXED_BYTES = 24_000  # an .eval log's header, plan and stats; scores.json's
EVAL_SAMPLE_BYTES = 1_800  # per sample scored: the .eval log's sample record (zipped) and its scores.json row


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # safetensors' name: F32, BF16, F16
    shape: tuple[int, ...]

    @property
    def bytes(self) -> int:
        return math.prod(self.shape) * (4 if self.dtype == "F32" else 2)


def adapter_tensors(arch: Architecture, rank: int, targets: list[str] | str, modules_to_save: list[str],
                    dtype: str) -> list[Tensor]:
    """The tensors PEFT saves in adapter_model.safetensors, named as it names them."""
    shapes = arch.linear_shapes()
    names = list(shapes) if targets == "all-linear" else [t for t in targets if t in shapes]
    out = []
    for layer in range(arch.layers):
        for name in names:
            d_in, d_out = shapes[name]
            where = f"base_model.model.model.layers.{layer}.{'self_attn' if name in ATTENTION else 'mlp'}.{name}"
            out += [Tensor(f"{where}.lora_A.weight", "F32", (rank, d_in)),
                    Tensor(f"{where}.lora_B.weight", "F32", (d_out, rank))]
    full = {"embed_tokens": "base_model.model.model.embed_tokens.weight", "lm_head": "base_model.model.lm_head.weight"}
    out += [Tensor(full[m], SAFETENSORS_DTYPE[dtype], (arch.vocab, arch.hidden)) for m in modules_to_save if m in full]
    return out


def safetensors_bytes(tensors: list[Tensor], metadata: dict[str, str] | None = None) -> int:
    """The size of a safetensors file of these tensors: header length, padded JSON header, data."""
    header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for t in sorted(tensors, key=lambda t: (-DTYPE_ORDER[t.dtype], t.name)):
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.bytes]}
        offset += t.bytes
    text = len(json.dumps(header, separators=(",", ":")).encode("utf-8"))
    return 8 + text + (-text) % 8 + offset


def optimizer_bytes(tensors: list[Tensor]) -> int:
    """optimizer.pt: two moments per tensor in its dtype, torch's per-tensor overhead."""
    return sum(2 * t.bytes for t in tensors) + OPTIMIZER_BYTES_PER_TENSOR * len(tensors) + OPTIMIZER_FIXED_BYTES


def tokenizer_bytes(model: str | Path) -> int:
    """The tokenizer files a checkpoint copies, at their size in the model directory."""
    path = Path(model)
    return sum((path / f).stat().st_size for f in TOKENIZER_FILES if (path / f).is_file())


@dataclass(frozen=True)
class Schedule:
    """Steps, saves and rows of one run (or stage): what decides how many files it leaves."""

    steps: int
    epochs: int  # epochs reached (max_steps may stop earlier): each publishes epoch_N and keeps its state
    mid_saves: int  # checkpoint_every saves that end no epoch
    logged_rows: int  # metrics.jsonl rows (training and validation)
    examples: int


def schedule(t: TrainingConfig, rows: int, examples: int, processes: int, seconds: float | None) -> Schedule:
    """The saves train/ makes for a run of `rows` training rows (sequences when packed)."""
    per_epoch = max(1, optimizer_steps(rows, t.batch_size, t.gradient_accumulation_steps, 1, None, processes))
    steps = min(per_epoch * t.epochs, t.max_steps or per_epoch * t.epochs)
    epochs = min(t.epochs, math.ceil(steps / per_epoch))
    every, every_s = t.checkpoint_interval
    mid = 0
    if every:
        mid = sum(1 for s in range(every, steps, every) if s % per_epoch)
    elif every_s and seconds:
        mid = max(0, int(seconds // every_s) - epochs)
    validations = (steps // t.validation_every_steps + 1) if t.validation_every_steps else 0
    return Schedule(steps, epochs, mid, steps // t.logging_steps + validations, examples)


def retention(keep: int | None, epoch_saves: int, mid_saves: int) -> tuple[int, int]:
    """(trainer states at the end, the most at once) under train/checkpoints.prune_trainer_checkpoints."""
    if keep:
        saves = epoch_saves + mid_saves
        return min(keep, saves), min(keep + 1, saves)
    return epoch_saves, epoch_saves + (1 if mid_saves else 0)


@dataclass(frozen=True)
class Part:
    """One run, or one stage of a staged run, as storage sees it."""

    training: TrainingConfig
    rows: int  # training rows per epoch (packed sequences when packed)
    examples: int


def eval_targets(cfg: RunConfig, epochs: int) -> int:
    """Checkpoints its evaluation scores (eval.epochs)."""
    choice = cfg.eval.epochs
    if choice == "all":
        return epochs
    if isinstance(choice, list):
        return len([e for e in choice if e < epochs])
    return len(cfg.stages) if choice == "stages" and cfg.stages else 1


def run_disk(cfg: RunConfig, parts: list[Part], dtype: str, est: RunEstimate | None = None,
             eval_samples: int = 0, gpu_job: bool = False) -> DiskEstimate:
    """The run's disk use: checkpoints as kept (and at most at once), logs, evaluation logs (`eval_samples` scored)."""
    t = parts[0].training
    arch = resolve_architecture(cfg.model.path)
    tensors = adapter_tensors(arch, t.lora_rank, t.lora_target_modules, t.modules_to_save, dtype)
    adapter = safetensors_bytes(tensors)
    tokenizer = tokenizer_bytes(cfg.model.path)
    seconds = est.seconds if est is not None else None
    sched = [schedule(p.training, p.rows, p.examples, cfg.resources.processes_per_run(1 if gpu_job else 0),
                      seconds) for p in parts]
    rows = sum(s.logged_rows for s in sched)
    optimizer = optimizer_bytes(tensors)
    state = adapter + optimizer + tokenizer + STATE_FIXED_BYTES + TRAINER_LOG_ENTRY_BYTES * rows
    kept_peak = [retention(p.training.keep_checkpoints, s.epochs, s.mid_saves) for p, s in zip(parts, sched)]
    kept = sum(k for k, _ in kept_peak)
    extra = max(peak - k for k, peak in kept_peak)  # stages run one after another: one save in progress at a time
    epochs = sum(s.epochs for s in sched)
    epoch_dir = adapter + ADAPTER_CONFIG_BYTES + tokenizer
    logs = (RUN_FILES_BYTES + rows * (METRICS_ROW_BYTES + LOG_LINE_BYTES)
            + sum(s.epochs * (order_bytes(s.examples) + 2 * LOG_LINE_BYTES) for s in sched)
            + (int((seconds or 0) / 5) * GPU_SAMPLE_BYTES if gpu_job else 0))
    evals = eval_targets(cfg, epochs) * (len(cfg.eval.resolved_tasks()) * EVAL_LOG_FIXED_BYTES
                                         + eval_samples * EVAL_SAMPLE_BYTES)
    total = epochs * epoch_dir + kept * state + logs + evals
    return DiskEstimate(
        adapter_bytes=adapter, epoch_checkpoint_bytes=epoch_dir, epoch_checkpoints=epochs, optimizer_bytes=optimizer,
        trainer_state_bytes=state, trainer_states_kept=kept, trainer_states_peak=kept + extra, log_bytes=logs,
        eval_bytes=evals, total_bytes=total, peak_bytes=total + extra * state,
        source=f"adapter exact ({len(tensors)} tensors, LoRA in float32, modules_to_save in {dtype}); optimizer: 2 "
               "moments per parameter + torch's file overhead; logs and eval logs estimated per row and sample")


def order_bytes(examples: int) -> int:
    """One epoch's line of data_order.jsonl, by digit count (summing every index slowed large plans)."""
    total, width, low = 80 + 2 * examples, 1, 0
    while low < examples:
        high = min(examples, 10**width)  # indices low … high − 1 have `width` digits
        total += width * (high - low)
        low, width = high, width + 1
    return total
