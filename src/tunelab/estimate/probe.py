"""`tunelab probe`: measure each distinct run shape of a sweep with a few real steps, so a plan on a fresh machine has
measured speed and memory instead of none.

Runs that differ only in what speed and memory do not depend on (learning rate, epochs, seed) share one probe. Each
shape's result becomes one history row (origin "probed", replaced by a later probe of the same shape), and each model's
timed generations the history's generation row (forecast/evaltime.py)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tunelab.catalog import match_gpu, resolve_architecture
from tunelab.errors import TunelabError
from tunelab.estimate.memory import MemoryInputs
from tunelab.estimate.peak import largest_micro_batch
from tunelab.host import threads
from tunelab.ledger import generation, history
from tunelab.rundir.config import RunConfig, save_run_config
from tunelab.rundir.layout import PROBE_RESULTS_FILE, PROBE_RUN_PREFIX
from tunelab.rundir.probe import SPREAD_LIMIT, ProbeResult, read_probe_results
from tunelab.spec import TrainingConfig

WARMUP_STEPS = 2  # steps trained before any is timed: optimizer state created, kernels warmed up
PROBE_MODULE = "tunelab.train.probe_steps"  # the probe's job: the run's own trainer, a few timed steps


def _training(cfg: RunConfig) -> TrainingConfig:
    """The training of a run that trains (a probe never sees a control: distinct_shapes leaves them out)."""
    if cfg.training is None:
        raise TunelabError("a control run (no training) has no shape to probe", field=cfg.name)
    return cfg.training


@dataclass
class Shape:
    key: str
    cfg: RunConfig  # the first run of this shape
    runs: list[str]

    def label(self) -> str:
        t = _training(self.cfg)
        return (f"{self.cfg.model.name} r{t.lora_rank} b{t.batch_size}{' packed' if t.packing else ''} × "
                f"{t.max_seq_len} on {self.cfg.dataset.name}")


def shape_key(cfg: RunConfig) -> str:
    first = cfg.stage_config(0) if cfg.stages else cfg
    t = _training(first)
    fields = [str(first.model.path), first.dataset.name, first.prompt, t.batch_size, t.max_seq_len, t.packing,
              t.lora_rank, t.lora_target_modules, t.modules_to_save, t.gradient_checkpointing, t.dtype, t.quantize,
              t.attention, t.lora_dropout]  # everything memory and speed depend on (estimate/measured.py)
    return hashlib.sha256(json.dumps(fields, default=str).encode()).hexdigest()[:12]


def distinct_shapes(runs: list[RunConfig]) -> list[Shape]:
    shapes: dict[str, Shape] = {}
    for cfg in runs:
        if cfg.training is None:
            continue
        key = shape_key(cfg)
        if key in shapes:
            shapes[key].runs.append(cfg.name)
        else:
            shapes[key] = Shape(key, cfg, [cfg.name])
    return list(shapes.values())


def to_history(shape: Shape, result: ProbeResult, spec_path: Path) -> history.HistoryRun:
    cfg = shape.cfg.stage_config(0) if shape.cfg.stages else shape.cfg
    t = _training(cfg)
    arch = resolve_architecture(cfg.model.path)
    at = next(p for p in result.points if p.micro_batch == result.micro_batch)
    return history.HistoryRun(
        key=f"probe:{shape.key}:{result.device}:{result.cpu_threads}", source="probe", origin="probed",
        origin_where=f"{spec_path} ({', '.join(shape.runs)})", experiment=cfg.experiment, run=shape.runs[0],
        model=cfg.model.name, layers=arch.layers, hidden=arch.hidden, parameters=arch.parameters,
        device=result.device, cpu_threads=result.cpu_threads, packed=t.packing,
        cpu_model=result.cpu_model, batch_size=t.batch_size,
        gradient_accumulation_steps=1, max_seq_len=t.max_seq_len, lora_rank=t.lora_rank,
        tokens_per_step=at.tokens, tokens_per_s=result.tokens_per_s, steps_per_s=round(1 / at.seconds, 4),
        per_token_s=result.per_token_s, step_fixed_s=result.fixed_s, peak_memory_gib=result.peak_memory_gib,
        memory_kind=result.memory_kind, steps=len(result.points), recorded_at=history.now_iso(),
        dtype=_probed_dtype(t, result), processes=1, **history.training_memory_fields(t),
        max_tokens_per_microbatch=int(max(p.tokens for p in result.points if p.micro_batch == t.batch_size)),
        missing="final_loss,final_val_loss,epochs", max_micro_batch=result.max_micro_batch,
        startup_s=result.startup_s, save_s=result.save_s, time_spread=result.spread,
        **history.load_fields(result.load))


def caveat(shape: Shape, result: ProbeResult) -> str | None:
    """One line when a shape's timings stayed contended or spread after the probe's repeats (None otherwise), e.g.
    'probe: tiny r16 bs4 timed under contention (…): ×2.4; repeated 3 times, spread 41 %'."""
    load, spread = result.load, result.spread
    contended = load is not None and load.contended
    if result.settled or (not contended and (spread is None or spread <= SPREAD_LIMIT)):
        return None
    t = _training(shape.cfg.stage_config(0) if shape.cfg.stages else shape.cfg)
    what = f"probe: {shape.cfg.model.name} r{t.lora_rank} bs{t.batch_size} timed"
    if load is not None and contended:
        what += (f" under contention (others held {load.others_cores:.1f} of {load.cores} cores): "
                 f"×{load.slowdown:.1f}")
    else:
        what += " with disagreeing steps"
    rounds = result.rounds or 1
    return what + (f"; repeated {rounds} times" if rounds > 1 else "") + (
        f", spread {100 * spread:.0f} %" if spread is not None else "")


def _probed_dtype(t: TrainingConfig, result: ProbeResult) -> str:
    """The dtype the probe trained in: `auto` resolved for its GPU (left `auto` on a GPU the catalog lacks)."""
    if t.dtype != "auto":
        return t.dtype
    if result.device == "cpu":
        return t.planned_dtype(None)
    gpu = match_gpu(result.device, result.gpu_memory_gib) if result.gpu_memory_gib else None
    return t.planned_dtype(gpu.compute_capability) if gpu is not None and gpu.compute_capability else t.dtype


def simulated_max_batch(cfg: RunConfig, result: ProbeResult) -> int | None:
    """The simulator's largest micro-batch on the probe's GPU for the step the probe measured: one process (probe_steps
    never runs under torchrun), whatever the run's gpus_per_run."""
    gpu = match_gpu(result.device, result.gpu_memory_gib) if result.gpu_memory_gib else None
    if gpu is None:
        return None
    t = _training(cfg)
    inputs = MemoryInputs.of_training(t, t.planned_dtype(gpu.compute_capability))
    return largest_micro_batch(cfg.model.path, inputs, gpu.memory_gib, t.max_seq_len, t.packing, None, limit=1024,
                               processes=1, strategy=None)


def probe_cfg(cfg: RunConfig, tag: str) -> RunConfig:
    """The run as the probe trains it: its first stage's shape, a few steps, no validation, a scratch dir."""
    if cfg.stages:
        cfg = cfg.stage_config(0)
    assert cfg.training is not None
    t = cfg.training.model_copy(update={"max_steps": WARMUP_STEPS, "validation_every_steps": None, "epochs": 1})
    return cfg.model_copy(update={"training": t, "name": f"{PROBE_RUN_PREFIX}{tag}", "stages": []})


def probe_shape(shape: Shape, max_batch: bool = False) -> ProbeResult:
    """One shape measured as a job trains: a process of its own on a scratch run directory (removed after)."""
    pcfg = probe_cfg(shape.cfg, shape.key)
    run_dir = pcfg.run_dir
    shutil.rmtree(run_dir, ignore_errors=True)
    try:
        run_yaml = save_run_config(pcfg, durable=False)
        cmd = [sys.executable, "-m", PROBE_MODULE, str(run_yaml), *(["--max-batch"] if max_batch else [])]
        # its threads by the rule a one-process job gets, so its rows match what the plan looks up (threads.py)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=threads.child_env(1))
        results = run_dir / PROBE_RESULTS_FILE
        if proc.returncode != 0 or not results.is_file():
            raise TunelabError(f"probe of {shape.label()} failed: {_last_line(proc.stderr)}", field=shape.runs[0])
        return read_probe_results(results)[shape.key]
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _last_line(text: str) -> str:
    """What a failed probe process said last (its error line, or its traceback's last line)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].removeprefix("error: ") if lines else "no output"


def measure_shapes(runs: list[RunConfig], progress: Callable[[int, int, Shape, ProbeResult | None], None] | None = None,
                   find_max_batch: bool = False) -> Iterator[tuple[Shape, ProbeResult]]:
    """Each distinct shape's measurement, in turn (what a probe job does; it records nothing)."""
    shapes = distinct_shapes(runs)
    for i, shape in enumerate(shapes, 1):
        if progress:
            progress(i, len(shapes), shape, None)
        result = probe_shape(shape, max_batch=find_max_batch)
        if progress:
            progress(i, len(shapes), shape, result)
        yield shape, result


def probe_runs(runs: list[RunConfig], spec_path: Path,
               progress: Callable[[int, int, Shape, ProbeResult | None], None] | None = None,
               find_max_batch: bool = False) -> list[history.HistoryRun]:
    """Probe every distinct shape in turn, recording each as measured, so an interrupted probe keeps those done."""
    rows = []
    for shape, result in measure_shapes(runs, progress, find_max_batch):
        row = to_history(shape, result, spec_path)
        if find_max_batch:
            row.simulated_max_micro_batch = simulated_max_batch(shape.cfg, result)
        history.record([row])
        record_generation(shape, result, spec_path)
        rows.append(row)
    return rows


def record_generation(shape: Shape, result: ProbeResult, spec_path: Path) -> None:
    """The shape's timed generation as the history's generation row of its model on this device."""
    row = generation.probed_row(str(shape.cfg.model.path), result, f"{spec_path} ({', '.join(shape.runs)})")
    if row is not None:
        generation.record([row])
