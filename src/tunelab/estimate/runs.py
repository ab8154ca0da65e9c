"""Per-run estimates for a plan: steps, tokens, peak memory, time, GPU-hours, a SLURM time limit —
each number with its source (measured history, or a model when there is none)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from statistics import median
from typing import Any

from tunelab.catalog import GPU, Architecture, resolve_architecture
from tunelab.estimate.batch import optimizer_steps
from tunelab.estimate.dataset import simulate_bfd_packing, simulate_padding
from tunelab.estimate.measured import MemoryConfig, measured_peak, measured_requirement
from tunelab.estimate.memory import MemoryInputs
from tunelab.estimate.peak import MemoryFigure, model_config_of, predict_peak, step_shape
from tunelab.estimate.simulator import StepShape
from tunelab.estimate.speed import (
    DEFAULT_MFU,
    SCALING_EFFICIENCY,
    dense_attention_flops,
    flops_per_token,
    model_tokens_per_s,
)
from tunelab.errors import TunelabError
from tunelab.ledger.history import HistoryRun
from tunelab.rundir.config import RunConfig
from tunelab.rundir.estimate import RunEstimate
from tunelab.spec import Strategy, TrainingConfig

TIME_LIMIT_MARGIN = 1.5  # SLURM limit = estimate × margin + 5 min, rounded up to 15 min
ASSUMED_STARTUP_S = 60.0  # model load + tokenization when no past run measured it
VALIDATION_COST = 1 / 3  # a forward pass costs about a third of a training step
# Gradient checkpointing recomputes each layer's forward in backward: LoRA's 4N FLOPs per token (forward 2N,
# input gradients 2N) become 6N. The FLOPs model's assumption; measured rows compare like with like.
RECOMPUTE_FACTOR = 1.5


def device_key(gpu: GPU | None) -> str:
    return gpu.name if gpu else "cpu"


def _same_device(row: HistoryRun, gpu: GPU | None, cpu_threads: int | None) -> bool:
    dev = (row.device or "").lower()
    if gpu is None:
        return dev == "cpu" and (cpu_threads is None or row.cpu_threads in (None, cpu_threads))
    stem = gpu.name.split("-")[0].lower()
    return stem in dev.replace(" ", "") and dev != "cpu"


def _same_model(row: HistoryRun, arch: Architecture) -> bool:
    return (row.layers, row.hidden, row.parameters) == (arch.layers, arch.hidden, arch.parameters)


def _nearest(rows: list[HistoryRun], tokens_per_step: float) -> list[HistoryRun]:
    """The past runs closest in tokens per optimizer step (throughput depends on it)."""
    def dist(r: HistoryRun) -> float:
        return abs(math.log((r.tokens_per_step or 1) / max(tokens_per_step, 1)))

    best = min(dist(r) for r in rows)
    return [r for r in rows if dist(r) <= best + 0.1]


def comparable_rows(rows: list[HistoryRun], t: Any) -> list[HistoryRun]:
    """Rows whose recorded shape matches what speed depends on beyond tokens: gradient checkpointing (a
    recomputed forward) and LoRA targets. A row that did not record a field is kept (unknown is not different)."""
    return [r for r in rows
            if (r.gradient_checkpointing is None or bool(r.gradient_checkpointing) == t.gradient_checkpointing)
            and (r.lora_targets is None or r.lora_targets == t.lora_targets_text)]


def _kinds(rows: list[HistoryRun]) -> str:
    """'2 probed', '1 measured + 1 ingested': how the rows an estimate rests on were obtained."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.kind] = counts.get(r.kind, 0) + 1
    return " + ".join(f"{n} {kind}" for kind, n in sorted(counts.items())) + " run(s)"


def _row_flops_per_token(row: HistoryRun, seq_len: float) -> float:
    # history keeps hidden, not heads × head_dim: equal for the families in the catalog
    return dense_attention_flops(row.parameters or 0, row.layers or 0, row.hidden or 0, seq_len)


def predicted_step_s(row: HistoryRun, arch: Architecture, tokens_per_step: float, seq_len: int,
                     micro_batches: int | None = None) -> float:
    """Step time from a measured run's fixed + per-token split, carried to another model and batch:
    the per-token part scales with FLOPs per token, the fixed part with the number of layers and, given
    `micro_batches` (the accumulation), with the micro-batches an optimizer step runs (each a forward and a
    backward of its own: the row's fixed part was measured over its own accumulation)."""
    if row.per_token_s is None:
        raise ValueError(f"history row {row.key} has no per-token step cost to carry over")
    row_seq = (row.tokens_per_step or seq_len) / ((row.batch_size or 1) * (row.gradient_accumulation_steps or 1))
    per_token = row.per_token_s * flops_per_token(arch, seq_len) / max(_row_flops_per_token(row, row_seq), 1.0)
    fixed = (row.step_fixed_s or 0.0) * (arch.layers + 1) / ((row.layers or arch.layers) + 1)
    if micro_batches is not None:
        fixed *= micro_batches / (row.gradient_accumulation_steps or 1)
    return fixed + per_token * tokens_per_step


def speed_from_history(arch: Architecture, gpu: GPU | None, tokens_per_step: float, seq_len: int,
                       history: list[HistoryRun], cpu_threads: int | None = None, micro_batches: int | None = None,
                       recompute: bool = False) -> tuple[float | None, str, list[HistoryRun]]:
    """Tokens/s per device, its source and the rows it rests on. micro_batches: the accumulation (the fixed
    part of a split row is paid per micro-batch); recompute: gradient checkpointing, priced by the FLOPs model
    (history rows are compared like with like, `comparable_rows`)."""
    on_device = [r for r in history if _same_device(r, gpu, cpu_threads) and r.tokens_per_s]
    same = [r for r in on_device if _same_model(r, arch)]
    split = [r for r in (same or on_device) if r.per_token_s is not None and r.step_fixed_s is not None]
    if split:
        near = _nearest(split, tokens_per_step)
        tps = median(tokens_per_step / predicted_step_s(r, arch, tokens_per_step, seq_len, micro_batches)
                     for r in near)
        what = "this model" if same else f"{near[0].model}, carried over by FLOPs and layers"
        return tps, f"history: {_kinds(near)} of {what} on {device_key(gpu)} (fixed + per-token step cost)", near
    if same:
        near = _nearest(same, tokens_per_step)
        tps = median(r.tokens_per_s for r in near if r.tokens_per_s is not None)  # on_device: all have one
        return tps, f"history: {_kinds(near)} of this model on {device_key(gpu)}", near
    if on_device:
        near = _nearest(on_device, tokens_per_step)
        ref = near[0]
        if ref.tokens_per_s is not None:  # always: on_device keeps only rows with a throughput
            # dense FLOPs per token ∝ parameters (4N for LoRA): scale the measured throughput by it
            tps = ref.tokens_per_s * (ref.parameters or arch.parameters) / arch.parameters
            return tps, f"history of {ref.model} on {device_key(gpu)}, scaled by FLOPs per token", near
    if gpu is not None:
        modelled = model_tokens_per_s(arch, gpu, seq_len)
        if modelled and recompute:
            return (modelled / RECOMPUTE_FACTOR, f"model: FLOPs at {DEFAULT_MFU:.0%} MFU of {gpu.name}, gradient "
                    f"checkpointing ×{RECOMPUTE_FACTOR:g} (a recomputed forward: 6N vs 4N FLOPs per token)", [])
        if modelled:
            return modelled, f"model: FLOPs at {DEFAULT_MFU:.0%} MFU of {gpu.name}", []
    return None, "none: no history on this device and no FLOPs peak for it", []


def _training(cfg: RunConfig) -> TrainingConfig:
    """The training of a run that trains (a control has no memory or speed to estimate)."""
    if cfg.training is None:
        raise TunelabError("a control run (no training) has no training to estimate", field=cfg.name)
    return cfg.training


def device_peak(cfg: RunConfig, gpu: GPU, inputs: MemoryInputs, shape: StepShape, nproc: int,
                arch: Architecture | None = None) -> tuple[MemoryFigure, Strategy | None]:
    """The simulated peak of one device and the strategy the run trains with on `nproc` devices: DDP (the whole
    model on each), or FSDP when the spec asks for it or only the sharded run fits. Plan and validate share it.
    A strategy the spec names is simulated alone; auto simulates both and chooses."""
    if nproc <= 1:
        return predict_peak(cfg.model.path, inputs, shape, 1, None, arch), None
    if cfg.resources.distributed != "auto":
        named = Strategy(cfg.resources.distributed)
        return predict_peak(cfg.model.path, inputs, shape, nproc, named, arch), named
    whole = predict_peak(cfg.model.path, inputs, shape, nproc, Strategy.DDP, arch)
    sharded = predict_peak(cfg.model.path, inputs, shape, nproc, Strategy.FSDP, arch)
    strategy = choose_strategy(cfg.resources.distributed, nproc, whole.required_gib, sharded.required_gib,
                               gpu.memory_gib)
    return (sharded if strategy == Strategy.FSDP else whole), strategy


def run_step(cfg: RunConfig, gpu: GPU, longest: int | None) -> tuple[MemoryInputs, StepShape]:
    """What the simulator runs for a run on this GPU: its memory inputs (a VLM's images in its rows) and its
    worst micro-batch (packed rows of max_seq_len, or rows padded to the longest example)."""
    t = _training(cfg)
    inputs = MemoryInputs.of_training(t, t.planned_dtype(gpu.compute_capability))
    shape = step_shape(t.batch_size, t.max_seq_len, t.packing, longest)
    if not t.packing:  # a VLM's rows carry an image through the vision tower (estimate/images.py)
        from tunelab.estimate.images import run_images

        inputs = run_images(inputs, cfg.model.path, model_config_of(cfg.model.path), t.min_pixels, t.max_pixels,
                            shape.seq_len)
    return inputs, shape


def _run_memory(cfg: RunConfig, gpu: GPU, arch: Architecture, nproc: int, longest: int,
                history: list[HistoryRun]) -> tuple[float, str, Strategy | None]:
    """(GiB per device that must fit, its source, strategy): simulated (device_peak), or on one process the
    history's measured peak of exactly this configuration in place of the simulated figure it measured
    (estimate/measured.py: an allocated peak + the simulated reserved − allocated slack + CUDA context)."""
    t = _training(cfg)
    inputs, shape = run_step(cfg, gpu, longest)
    figure, strategy = device_peak(cfg, gpu, inputs, shape, nproc, arch)
    source = figure.source + {Strategy.FSDP: f", FSDP: sharded over {nproc} devices",
                              Strategy.DDP: ", DDP: the whole model on each device", None: ""}[strategy]
    if nproc == 1:
        row = measured_peak(history, gpu, arch, MemoryConfig.planned(t, inputs, shape.tokens))
        measured = measured_requirement(row, figure) if row is not None else None
        if measured is not None:
            return round(measured[0], 2), measured[1], strategy
    return round(figure.required_gib, 2), source, strategy


# A sweep repeats the same model, data and batch shape across many runs: compute each once.
@lru_cache(maxsize=64)
def _architecture(path: str) -> Architecture:
    return resolve_architecture(path)


@lru_cache(maxsize=256)
def _packed_rows(lengths: tuple[int, ...], max_seq_len: int) -> int:
    return simulate_bfd_packing(list(lengths), max_seq_len).sequences


@lru_cache(maxsize=1024)
def _padded_tokens(lengths: tuple[int, ...], batch: int, max_seq_len: int, seed: int) -> int:
    return simulate_padding(list(lengths), batch, max_seq_len, seed=seed).padded_tokens


def slurm_time_limit(seconds: float) -> str:
    minutes = math.ceil((seconds * TIME_LIMIT_MARGIN + 300) / 60 / 15) * 15
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


def choose_strategy(distributed: str, processes: int, full_peak_gib: float | None, sharded_peak_gib: float | None,
                    gpu_memory_gib: float | None) -> Strategy | None:
    """How N processes train: the spec's choice, or (auto) DDP unless the whole model does not fit one
    device and the sharded one does (FSDP). None on one process."""
    if processes <= 1:
        return None
    if distributed != "auto":
        return Strategy(distributed)
    if full_peak_gib is not None and gpu_memory_gib and full_peak_gib > gpu_memory_gib \
            and sharded_peak_gib is not None and sharded_peak_gib <= gpu_memory_gib:
        return Strategy.FSDP
    return Strategy.DDP


def _wall_time(tps: float, refs: list[HistoryRun], time_source: str, train_tokens: float, nproc: int, steps: int,
               t: Any, val_lengths: list[int]) -> tuple[float, float | None, str]:
    """(seconds, start-up, source): training at `tps` per device plus validation and checkpoint overhead,
    start-up and finish, from the reference runs when they measured them."""
    efficiency = SCALING_EFFICIENCY if nproc > 1 else 1.0
    startup = None
    train_s = train_tokens / (tps * nproc * efficiency)  # N devices, each at tps, less communication
    if nproc > 1:
        time_source += f"; {nproc} processes at {efficiency:.0%} scaling efficiency (assumed)"
    fracs = [(r.overhead_s or 0) / r.train_time_s for r in refs if r.train_time_s]
    overhead_frac = median(fracs) if fracs else 0.0
    if not fracs and t.validation_every_steps:
        n_val = steps // t.validation_every_steps + 1
        overhead_frac = n_val * sum(val_lengths) * VALIDATION_COST / max(train_tokens / nproc, 1)
    startups = [r.startup_s for r in refs if r.startup_s is not None]
    if startups:
        startup = median(startups)
    elif not refs:
        startup = ASSUMED_STARTUP_S
        time_source += f" + {ASSUMED_STARTUP_S:.0f} s start-up (assumed)"
    finishes = [r.finish_s for r in refs if r.finish_s is not None]
    finish = median(finishes) if finishes else 0.0
    return round((startup or 0.0) + train_s * (1 + overhead_frac) + finish, 1), startup, time_source


@dataclass(frozen=True)
class RunTime:
    """What a run's training time rests on: steps and tokens (padding included), the speed and its source,
    the wall time (None: no speed known). The levers (plan/levers.py) price candidate settings with it."""

    steps: int
    tokens_per_epoch: int
    train_tokens: float
    tokens_per_microbatch: int
    tokens_per_s: float | None
    seconds: float | None
    startup_s: float | None
    source: str
    processes: int


def run_time(cfg: RunConfig, gpu: GPU | None, lengths: list[int], val_lengths: list[int],
             history: list[HistoryRun], cpu_threads: int | None = None) -> RunTime:
    """The training time of one run (no memory): steps from its rows, tokens from packing or the padding of
    its micro-batch, speed from comparable history (the fixed part per micro-batch) or the FLOPs model."""
    t = _training(cfg)
    arch = _architecture(cfg.model.path)
    nproc = cfg.resources.processes_per_run(1 if gpu is not None else 0)
    key = tuple(lengths)
    if t.packing:
        rows = _packed_rows(key, t.max_seq_len)
        tokens_epoch = sum(min(n, t.max_seq_len) for n in lengths)
    else:
        rows = len(lengths)
        tokens_epoch = _padded_tokens(key, t.batch_size, t.max_seq_len, t.seed)
    full_steps = optimizer_steps(rows, t.batch_size, t.gradient_accumulation_steps, t.epochs, processes=nproc)
    steps = optimizer_steps(rows, t.batch_size, t.gradient_accumulation_steps, t.epochs, t.max_steps, nproc)
    train_tokens = tokens_epoch * t.epochs * steps / full_steps
    tokens_mb = step_shape(t.batch_size, t.max_seq_len, t.packing, max(lengths)).tokens
    tokens_per_step = train_tokens / max(steps, 1) / nproc  # per device: the unit of history and speed
    seq = t.max_seq_len if t.packing else sum(lengths) / len(lengths)  # tokens one example attends over
    tps, source, refs = speed_from_history(arch, gpu, tokens_per_step, int(seq), comparable_rows(history, t),
                                           cpu_threads, t.gradient_accumulation_steps, t.gradient_checkpointing)
    seconds = startup = None
    if tps:
        seconds, startup, source = _wall_time(tps, refs, source, train_tokens, nproc, steps, t, val_lengths)
    return RunTime(steps, tokens_epoch, train_tokens, tokens_mb, tps, seconds, startup, source, nproc)


def estimate_run(cfg: RunConfig, gpu: GPU | None, lengths: list[int], val_lengths: list[int],
                 history: list[HistoryRun], cpu_threads: int | None = None) -> RunEstimate:
    """lengths: token lengths of the train split as training formats it (measured). Memory is per device;
    time is the wall time of all the run's processes together."""
    t = cfg.training
    assert t is not None, "controls have nothing to estimate"
    arch = _architecture(cfg.model.path)
    res = cfg.resources
    time = run_time(cfg, gpu, lengths, val_lengths, history, cpu_threads)
    nproc, seconds, tps = time.processes, time.seconds, time.tokens_per_s
    peak = gpu_mem = None
    strategy = Strategy.DDP if nproc > 1 else None
    mem_source = "not modelled on CPU"
    if gpu is not None:
        peak, mem_source, strategy = _run_memory(cfg, gpu, arch, nproc, max(lengths), history)
        gpu_mem = gpu.memory_gib
    efficiency = SCALING_EFFICIENCY if nproc > 1 else 1.0
    return RunEstimate(
        run=cfg.name,
        packed=t.packing,
        micro_batch=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        tokens_per_microbatch=time.tokens_per_microbatch,
        steps=time.steps,
        tokens_per_epoch=time.tokens_per_epoch,
        peak_memory_gib=peak,
        gpu_memory_gib=gpu_mem,
        memory_source=mem_source,
        tokens_per_s=round(tps, 1) if tps else None,
        startup_s=round(time.startup_s, 1) if time.startup_s is not None else None,
        seconds=seconds,
        time_source=time.source,
        gpu_hours=round(seconds * nproc / 3600, 4) if seconds is not None and gpu is not None else None,
        slurm_time_limit=slurm_time_limit(seconds) if seconds is not None else None,
        processes=nproc,
        nodes=res.nodes_per_run,
        strategy=strategy,
        effective_batch=t.effective_batch_size(nproc),
        scaling_efficiency=efficiency if nproc > 1 else None,
        train_tokens=round(time.train_tokens),
    )
