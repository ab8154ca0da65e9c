"""Per-run estimates for a plan: steps, tokens, peak memory, time, GPU-hours, a SLURM time limit —
each number with its source (measured history, or a model when there is none)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from statistics import median
from typing import Any, NamedTuple

from tunelab.catalog import GPU, Architecture, resolve_architecture
from tunelab.errors import TunelabError
from tunelab.estimate.batch import optimizer_steps
from tunelab.estimate.dataset import simulate_bfd_packing, simulate_padding
from tunelab.estimate.image_tokens import run_images
from tunelab.estimate.measured import MemoryConfig, measured_peak, measured_requirement
from tunelab.estimate.memory import MemoryInputs
from tunelab.estimate.peak import MemoryFigure, model_config_of, predict_peak, step_shape
from tunelab.estimate.simulator import StepShape
from tunelab.estimate.storage import schedule
from tunelab.forecast import cpuspeed, loopcost  # their timings looked up when called (tests inject them)
from tunelab.forecast.cpuspeed import TimedSpeed, timed_startup
from tunelab.forecast.gpustep import GpuWork
from tunelab.forecast.loopcost import LoopOverhead
from tunelab.forecast.speed import SCALING_EFFICIENCY
from tunelab.forecast.speedhistory import (
    Speed,
    comparable_rows,
    origin_kind,
    same_device,
    same_targets,
    speed_from_history,
)
from tunelab.host.adapt import planning_window
from tunelab.ledger.history import HistoryRun
from tunelab.ledger.slowdown import loaded
from tunelab.rundir.config import RunConfig
from tunelab.rundir.estimate import RunEstimate, SourceKind
from tunelab.rundir.summary import calibrates_step_cost, step_cost_seconds
from tunelab.spec import Strategy, TrainingConfig

MIN_HELD_CORES = 0.5  # others holding less than this while planning: the plan prices as if idle
LIKE_SHARE = 0.2  # a run measured with others' share of the cores within this of now's was under a like load


def load_factor(rows: list[HistoryRun], history: list[HistoryRun], threads: int | None) -> tuple[float, str]:
    """(factor ≥ 1 the run's time is multiplied by, the source's words); (1, "") when the plan is not under load."""
    window = planning_window()
    if window is None or window.wall_s <= 0 or window.others_cores < MIN_HELD_CORES:
        return 1.0, ""
    if rows and all(loaded(r) for r in rows):
        return 1.0, ""
    held = f"others held {window.others_cores:.1f} of {window.cores} cores while planning"
    like = [r.measured_slowdown for r in history if r.measured_slowdown and r.others_share is not None
            and abs(r.others_share - window.others_share) <= LIKE_SHARE]
    if like:
        factor = max(1.0, median(like))
        return factor, f"×{factor:.2f} for the load now ({held}): measured on {len(like)} run(s) under a like load"
    modelled = replace(window, threads=threads or 1).slowdown  # the job's threads on the cores others left
    return modelled, (f"×{modelled:.2f} for the load now ({held}): modelled from its share of the cores, a lower "
                      "bound — no run here was measured under a like load yet")


VALIDATION_COST = 1 / 3  # a forward pass costs about a third of a training step (assumed, where none was timed)


@dataclass(frozen=True)
class RunOverheads:
    """What a first-contact run adds to its micro-batches (loop, validations, saves) and how each was priced."""

    loop_s: float
    validations: int
    validation_s: float
    saves: int
    save_s: float
    source: str
    imports_s: float | None = None  # the loop's measuring job's start-up (a fresh interpreter's imports)

    @property
    def total_s(self) -> float:
        return self.loop_s + self.validations * self.validation_s + self.saves * self.save_s


def validation_count(steps: int, every: int | None) -> int:
    """Validations a run of `steps` makes: at every multiple of `every`, and at the last step unless one fell
    there (train/runner.py `_validate_at_end`) — ceil(steps / every); none without `every`."""
    return math.ceil(steps / every) if every and steps > 0 else 0


def first_contact_overheads(timed: TimedSpeed, loop: LoopOverhead, t: TrainingConfig, steps: int, saves: int,
                            tokens_per_microbatch: int, validation_tokens: int, processes: int = 1) -> RunOverheads:
    """The parts a run adds to `steps` steps of micro-batches timed at `timed` (validation tokens as padded)."""
    n_val = validation_count(steps, t.validation_every_steps)
    words = [loop.source] if steps else []
    if timed.forward_s:
        forward_per_token = timed.forward_s / max(tokens_per_microbatch, 1)
        how = f"a forward timed here ({timed.forward_s * 1e3:.1f} ms a micro-batch)"
    else:
        forward_per_token = VALIDATION_COST / timed.tokens_per_s
        how = f"a forward at {VALIDATION_COST:.2f} of a training step (assumed)"
    val_s = forward_per_token * validation_tokens / max(processes, 1)
    if n_val:
        words.append(f"+ {n_val} validation(s) of {validation_tokens:,} tokens, {val_s:.2f} s each at {how}")
    save_s = timed.save_s or 0.0
    if saves:
        words.append(f"+ {saves} save(s), {save_s:.2f} s each (its adapter and optimizer state written, timed here)"
                     if timed.save_s else f"+ {saves} save(s), not priced (none timed for a shape this large)")
    return RunOverheads(loop.step_s * steps, n_val, val_s, saves, save_s, " ".join(words), loop.imports_s)


TIME_LIMIT_MARGIN = 1.5  # SLURM limit = estimate × margin + 5 min, rounded up to 15 min
ASSUMED_STARTUP_S = 60.0  # model load + tokenization when no past run measured it

REFERENCE_OVERHEAD = "validation and saves as the reference runs measured them"


def _training(cfg: RunConfig) -> TrainingConfig:
    """The training of a run that trains (a control has no memory or speed to estimate)."""
    if cfg.training is None:
        raise TunelabError("a control run (no training) has no training to estimate", field=cfg.name)
    return cfg.training


def device_peak(cfg: RunConfig, gpu: GPU, inputs: MemoryInputs, shape: StepShape, nproc: int,
                arch: Architecture | None = None) -> tuple[MemoryFigure, Strategy | None]:
    """The simulated peak of one device and the strategy on `nproc` devices: DDP, or FSDP when asked or only the sharded
    run fits (auto simulates both). Plan and validate share it."""
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
    if not t.packing:  # a VLM's rows carry an image through the vision tower (estimate/image_tokens.py)
        inputs = run_images(inputs, cfg.model.path, model_config_of(cfg.model.path), t.min_pixels, t.max_pixels,
                            shape.seq_len)
    return inputs, shape


def _run_memory(cfg: RunConfig, gpu: GPU, arch: Architecture, nproc: int, longest: int,
                history: list[HistoryRun]) -> tuple[float, str, Strategy | None]:
    """(GiB per device that must fit, source, strategy): simulated, or this exact configuration's measured peak."""
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
    """How N processes train: the spec's choice, or (auto) DDP unless only FSDP fits. None on one process."""
    if processes <= 1:
        return None
    if distributed != "auto":
        return Strategy(distributed)
    if full_peak_gib is not None and gpu_memory_gib and full_peak_gib > gpu_memory_gib \
            and sharded_peak_gib is not None and sharded_peak_gib <= gpu_memory_gib:
        return Strategy.FSDP
    return Strategy.DDP


def _reference_overheads(refs: list[HistoryRun]) -> list[float]:
    """Each reference run's time outside its steps (validation, saves) as a share of its training time."""
    return [(r.overhead_s or 0) / r.train_time_s for r in refs if r.train_time_s]


def _wall_time(tps: float, refs: list[HistoryRun], time_source: str, train_tokens: float, nproc: int, steps: int,
               t: Any, val_lengths: list[int], timed_start: tuple[float, str] | None = None,
               first: RunOverheads | None = None, stage: bool = False) -> tuple[float, float | None, str, float]:
    """(seconds, start-up, source, finish): training at `tps` per device plus validation, checkpoint, start-up and finish from
    the reference runs; on first contact as first_contact_overheads prices them. Where no row measured a finish, the
    step-cost calibration the job takes after training."""
    efficiency = SCALING_EFFICIENCY if nproc > 1 else 1.0
    startup = None
    train_s = train_tokens / (tps * nproc * efficiency)  # N devices, each at tps, less communication
    if nproc > 1:
        time_source += f"; {nproc} processes at {efficiency:.0%} scaling efficiency (assumed)"
    fracs = _reference_overheads(refs)
    overhead_frac = median(fracs) if fracs else 0.0
    if not fracs and t.validation_every_steps and first is None:
        n_val = steps // t.validation_every_steps + 1
        overhead_frac = n_val * sum(val_lengths) * VALIDATION_COST / max(train_tokens / nproc, 1)
    startups = [r.startup_s for r in refs if r.startup_s is not None]
    if startups:
        startup = median(startups)
    elif not refs and timed_start is not None:
        startup = timed_start[0]
        time_source += f" + {timed_start[1]}"
    elif not refs:
        startup = ASSUMED_STARTUP_S
        time_source += f" + {ASSUMED_STARTUP_S:.0f} s start-up (assumed)"
    if fracs:
        time_source += f" + {REFERENCE_OVERHEAD}"
    elif first is not None:
        time_source += f" {first.source}"
    elif t.validation_every_steps:
        time_source += (f" + {n_val} validation(s) at a forward = {VALIDATION_COST:.2f} of a training step "
                        "(assumed)")
    finishes = [r.finish_s for r in refs if r.finish_s is not None]
    finish = median(finishes) if finishes else 0.0
    if not finishes and all(r.kind == "probed" for r in refs) and calibrates_step_cost(nproc, stage) and steps:
        finish = step_cost_seconds(steps, t.batch_size, train_s / (steps * t.gradient_accumulation_steps))
        if finish:
            time_source += (f" + the step-cost calibration after training ({finish:.1f} s: micro-batches at half "
                            "and twice the run's, priced by their rows at its own)")
    added = first.total_s if first is not None else 0.0
    total = round((startup or 0.0) + train_s * (1 + overhead_frac) + added + finish, 1)
    return total, startup, time_source, finish


@dataclass(frozen=True)
class RunTime:
    """What a run's training time rests on: steps, tokens, speed and source, wall time (None: no speed)."""

    steps: int
    tokens_per_epoch: int
    train_tokens: float
    tokens_per_microbatch: int
    tokens_per_s: float | None
    seconds: float | None
    startup_s: float | None
    source: str
    processes: int
    kind: SourceKind = SourceKind.ASSUMED  # the speed's
    startup_kind: SourceKind = SourceKind.ASSUMED
    spread: float = 0.0
    contention: str = ""
    first_contact: RunOverheads | None = None  # what the job adds, priced part by part (nothing measured here)
    below_timed: bool = False  # its micro-batch below all the history rows timed: priced low (speedhistory.py)
    saves_in_time: bool = False  # seconds hold its saves: first contact prices them, reference runs' overhead theirs
    finish_s: float = 0.0  # of seconds, the step-cost calibration after training (a search's trial skips it)


def startup_kind(refs: list[HistoryRun]) -> SourceKind:
    """The kind of a start-up taken from these rows (assumed without any that measured it)."""
    timed = [r for r in refs if r.startup_s is not None]
    return origin_kind(timed) if timed else SourceKind.ASSUMED


class RunLengths(NamedTuple):
    """A run's token lengths as trained (train and validation), and the share of a micro-batch's positions whose logits
    its loss keeps (models/loss_positions.py's kept_share: on a CPU the step computes only those)."""

    train: list[int]
    validation: list[int]
    kept: float = 1.0


def run_time(cfg: RunConfig, gpu: GPU | None, lengths: list[int], val_lengths: list[int],
             history: list[HistoryRun], cpu_threads: int | None = None, stage: bool = False,
             kept: float = 1.0) -> RunTime:
    """The training time of one run (no memory); `stage`: cfg is one stage of a staged run; `kept`: RunLengths'."""
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
    speed = speed_from_history(arch, gpu, tokens_per_step, int(seq), comparable_rows(history, t), cpu_threads,
                               t.gradient_accumulation_steps, t.gradient_checkpointing, t.batch_size,
                               GpuWork.of_training(arch, t))
    first = timed = None
    if speed.tokens_per_s is None and gpu is None and not any(same_device(r, gpu, cpu_threads)
                                                             for r in same_targets(history, t)):
        # nothing measured on this CPU of these LoRA targets: timed here (a row that differs only in checkpointing
        # is priced across by the levers, forecast/split.py; rows of other targets say nothing of this shape)
        timed = cpuspeed.timed_cpu_speed(cfg, tokens_mb, cpu_threads, kept)
        speed = Speed(timed.tokens_per_s, timed.source, [], timed.kind, timed.spread, timed.contention)
        first = _first_contact(cfg, timed, steps, rows, tokens_mb, val_lengths, nproc,
                               train_tokens / timed.tokens_per_s, cpu_threads)
    tps, source, refs = speed.tokens_per_s, speed.source, speed.rows
    if tps and gpu is None:  # a plan made while others hold cores: the slowdown its training will suffer
        factor, why = load_factor(refs, history, cpu_threads)
        tps, source = tps / factor, f"{source}; {why}" if why else source
    seconds = startup = None
    finish = 0.0
    timed_start = None
    if timed is not None:  # found on this CPU (timed steps, or a timed matmul's model): its start-up timed here too
        timed_start = timed_startup(cfg.model.path, arch.parameters, first.imports_s if first else None)
    if tps:
        seconds, startup, source, finish = _wall_time(tps, refs, source, train_tokens, nproc, steps, t, val_lengths,
                                                      timed_start, first, stage)
    kind = SourceKind.TIMED if timed_start is not None else startup_kind(refs)
    saves_in_time = seconds is not None and (first is not None or bool(_reference_overheads(refs)))
    return RunTime(steps, tokens_epoch, train_tokens, tokens_mb, tps, seconds, startup, source, nproc, speed.kind,
                   kind, speed.spread, speed.contention, first, speed.below_timed, saves_in_time, finish)


def _first_contact(cfg: RunConfig, timed: Any, steps: int, rows: int, tokens_mb: int, val_lengths: list[int],
                   nproc: int, train_s: float, threads: int | None) -> RunOverheads:
    """What the job adds to its timed micro-batches: this machine's loop cost, validations and saves."""
    t = _training(cfg)
    plan = schedule(t, rows, rows, nproc, train_s)
    if t.packing:  # packed validation rows: the split's tokens, no padding
        val_tokens = sum(min(n, t.max_seq_len) for n in val_lengths)
    else:  # its batches each padded to their longest
        val_tokens = _padded_tokens(tuple(val_lengths), t.batch_size, t.max_seq_len, t.seed) if val_lengths else 0
    loop = loopcost.loop_for(threads, train_s / max(steps, 1))
    return first_contact_overheads(timed, loop, t, steps, plan.epochs + plan.mid_saves, tokens_mb, val_tokens, nproc)


def estimate_run(cfg: RunConfig, gpu: GPU | None, lengths: list[int], val_lengths: list[int],
                 history: list[HistoryRun], cpu_threads: int | None = None, stage: bool = False,
                 kept: float = 1.0) -> RunEstimate:
    """lengths: the train split's token lengths as trained; memory per device, time the wall time of all processes."""
    t = cfg.training
    assert t is not None, "controls have nothing to estimate"
    arch = _architecture(cfg.model.path)
    res = cfg.resources
    time = run_time(cfg, gpu, lengths, val_lengths, history, cpu_threads, stage, kept)
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
        saves_in_time=time.saves_in_time,
        finish_s=round(time.finish_s, 2) if seconds is not None and time.finish_s else None,
        gpu_hours=round(seconds * nproc / 3600, 4) if seconds is not None and gpu is not None else None,
        slurm_time_limit=slurm_time_limit(seconds) if seconds is not None else None,
        processes=nproc,
        nodes=res.nodes_per_run,
        strategy=strategy,
        effective_batch=t.effective_batch_size(nproc),
        scaling_efficiency=efficiency if nproc > 1 else None,
        train_tokens=round(time.train_tokens),
        time_kind=time.kind.value if seconds is not None else "",
        startup_kind=time.startup_kind.value if time.startup_s is not None else "",
        time_spread=round(time.spread, 4),
        seconds_raw=seconds,
        startup_raw_s=round(time.startup_s, 1) if time.startup_s is not None else None,
    )
