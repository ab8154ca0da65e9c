"""A few real optimizer steps of one run's shape, before the sweep: what `tunelab probe` measures.

The trainer is the run's own (build_trainer: the same model, data, LoRA, collator and loop). It trains a
couple of steps first (optimizer state created, kernels warmed up), then times real steps — collation,
forward, backward, optimizer — at the planned micro-batch and at the next larger one, taking turns
(train/step_cost.py), so a step's fixed cost separates from its cost per token. Peak memory is
`torch.cuda.max_memory_allocated` / `max_memory_reserved` on a GPU and the process's peak RSS on a CPU.
The trainer's scratch directory is removed afterwards, also on Ctrl-C.
"""

from __future__ import annotations

import resource
import shutil
import sys

from tunelab.compat import library_versions, quiet_hf_progress_bars
from tunelab.runconfig import RunConfig
from tunelab.rundir.probe import ProbePoint, ProbeResult

WARMUP_STEPS = 2
GIB = 2**30


def _rss_gib() -> float:
    """Peak resident set size of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / GIB if sys.platform == "darwin" else peak * 1024 / GIB


def probe_cfg(cfg: RunConfig, tag: str) -> RunConfig:
    """The run as the probe trains it: its first stage's shape, a few steps, no validation, a scratch dir."""
    if cfg.stages:
        cfg = cfg.stage_config(0)
    t = cfg.training.model_copy(update={"max_steps": WARMUP_STEPS, "validation_every_steps": None, "epochs": 1})
    return cfg.model_copy(update={"training": t, "name": f".probe-{tag}", "stages": []})


def fits_step(trainer, batch: int) -> bool:
    """Whether one real step at this micro-batch runs without running out of GPU memory."""
    import torch

    from tunelab.train.runner import _inject_oom_fault
    from tunelab.train.step_cost import _time_real_steps

    try:
        _inject_oom_fault(batch)  # the test knob stands in for a GPU's limit on machines without one
        return bool(_time_real_steps(trainer, [batch], repeats=1))
    except torch.OutOfMemoryError:
        return False
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def find_max_batch(trainer, start: int, limit: int = 1024) -> int:
    """The largest micro-batch that runs a real step: doubling from `start` until one fails, then bisection
    (the lab's adaptive batch sizing). 0 when not even 1 runs."""
    lo, hi = 0, limit + 1
    b = max(1, start)
    while b <= limit:
        if not fits_step(trainer, b):
            hi = b
            break
        lo, b = b, b * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits_step(trainer, mid) else (lo, mid)
    return lo


def probe_run(cfg: RunConfig, tag: str, micro_batches: tuple[int, ...] | None = None,
              max_batch: bool = False) -> ProbeResult:
    """Warm up, then time real steps at the run's micro-batch and twice it (and with `max_batch` find the
    largest micro-batch that runs)."""
    import torch

    from tunelab.train.runner import build_trainer
    from tunelab.train.step_cost import _time_real_steps

    quiet_hf_progress_bars()  # one line per shape is the probe's own progress
    pcfg = probe_cfg(cfg, tag)
    b = pcfg.training.batch_size
    sizes = micro_batches or (b, 2 * b)
    try:
        trainer, _, _ = build_trainer(pcfg)
        trainer.train()
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        measured = _time_real_steps(trainer, sorted(set(sizes)))
        reserved = torch.cuda.max_memory_reserved() / GIB if cuda else None
        largest = find_max_batch(trainer, b) if max_batch else None
    finally:
        shutil.rmtree(pcfg.run_dir, ignore_errors=True)
    result = _result(b, measured, reserved, cuda, library_versions())
    result.max_micro_batch = largest
    return result


def _result(b: int, measured: dict[int, tuple[float, float, float | None]], reserved: float | None, cuda: bool,
            versions: dict[str, str]) -> ProbeResult:
    import torch

    points = [ProbePoint(micro_batch=mb, tokens=tokens, seconds=round(sec, 6), peak_allocated_gib=peak) for mb, (tokens, sec, peak) in sorted(measured.items())]
    if not points:
        raise RuntimeError("the training split is too small to time a single step")
    at = next((p for p in points if p.micro_batch == b), points[0])
    per_token = fixed = None
    if len(points) >= 2 and points[-1].tokens != points[0].tokens:
        per_token = max(0.0, (points[-1].seconds - points[0].seconds) / (points[-1].tokens - points[0].tokens))
        fixed = max(0.0, at.seconds - per_token * at.tokens)
    return ProbeResult(
        micro_batch=b, points=points, tokens_per_s=round(at.tokens / at.seconds, 2), per_token_s=per_token,
        fixed_s=fixed, peak_memory_gib=at.peak_allocated_gib if cuda else round(_rss_gib(), 3),
        memory_kind="cuda_max_allocated" if cuda else "cpu_max_rss",
        device=torch.cuda.get_device_name(0) if cuda else "cpu", cpu_threads=torch.get_num_threads(),
        peak_reserved_gib=round(reserved, 3) if reserved is not None else None, versions=versions,
        gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / GIB, 2) if cuda else None)
