"""A few real optimizer steps of one run's shape: what `tunelab probe` measures, as a process of its own (`python -m
tunelab.train.probe_steps RUN_YAML [--max-batch]`, RUN_YAML the probe's scratch run), its result into that run's
directory (rundir.probe).

The trainer is the run's own. After a warm-up it times real steps at the planned micro-batch and the next larger, taking
turns (train/step_cost.py), so the fixed cost separates from the cost per token; while timings disagree by more than
SPREAD_LIMIT or the window was contended, up to MORE_ROUNDS more rounds. One checkpoint save is timed (`time_save`),
then generations (train/probe_steps.py).

`--steps=N` (the GPU kit): N timed steps at the planned micro-batch, each kept with what the device says
(train/device_memory.py). `--profile=DIR`: PROFILE_STEPS more steps through the Trainer's loop under torch.profiler,
each part labelled (train/profile.py, profile_report.py)."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

from tunelab.compat import library_versions, quiet_hf_progress_bars
from tunelab.errors import TunelabError
from tunelab.faults import inject_oom_fault
from tunelab.host.device import merges_adapters, resolve_dtype
from tunelab.host.machine import cpu_model
from tunelab.host.startup import skip_unused_packages
from tunelab.jobimports import Stack, import_job_stack
from tunelab.rundir.config import RunConfig, load_run_config
from tunelab.rundir.layout import PROBE_RESULTS_FILE, PROBE_RUN_PREFIX
from tunelab.rundir.memory import MemoryKind
from tunelab.rundir.probe import (
    EVAL_PROBE_BATCH,
    MORE_ROUNDS,
    SPREAD_LIMIT,
    GenerationPoint,
    GenerationSpeed,
    ProbePoint,
    ProbeResult,
    ProbeStep,
    write_probe_results,
)
from tunelab.train import TRAINING_STACK
from tunelab.train.device_memory import GIB, DeviceMemory, peak_rss_gib
from tunelab.train.metrics import process_age_s
from tunelab.train.profile import profile_loop
from tunelab.train.step_cost import TimedSteps, time_real_steps

GENERATE_TOKENS = 16  # decode steps timed per batch
PROMPT_TOKENS = 128  # a prompt's tokens (at most half the run's max_seq_len)
# each timing is the best of REPEATS runs at least, more while under TIMING_S (at most MAX_REPEATS): the first call
# of a shape warms kernels and caches, and on a shared CPU only the fastest run shows the generation itself
REPEATS, TIMING_S, MAX_REPEATS = 3, 2.0, 50


def time_generation(cfg: RunConfig, device: str) -> GenerationSpeed:
    """Generation speed of the run's model with a LoRA of the run's shape, on `device`."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from tunelab.models.lora import lora_config

    t = cfg.training
    assert t is not None, "a control trains nothing: the probe never sees one"
    dtype = resolve_dtype(t.dtype, device)
    base: Any = AutoModelForCausalLM.from_pretrained(cfg.model.path, dtype=dtype)
    lora: Any = lora_config(t.lora_rank, t.effective_lora_alpha, 0.0, t.lora_target_modules, [])
    model = get_peft_model(base, lora)
    if merges_adapters(device):  # as evaluation answers an adapter here (evaluate/merging.py)
        model = model.merge_and_unload()
    model.to(device)
    model.eval()
    from tunelab.models.cpu_linear import accelerate

    accelerate(model)  # on a CPU, as evaluation answers there (evaluate/hf.py); a GPU's model is left alone
    prompt = max(1, min(PROMPT_TOKENS, t.max_seq_len // 2))
    vocab = int(base.config.vocab_size)
    points = []
    with torch.inference_mode():
        for batch in (1, EVAL_PROBE_BATCH):
            ids = torch.randint(3, max(4, vocab - 1), (batch, prompt), generator=torch.Generator().manual_seed(0))
            ids = ids.to(device)
            prefill = _best(model, ids, 1, device)
            total = _best(model, ids, GENERATE_TOKENS, device)
            points.append(GenerationPoint(batch=batch, prompt_tokens=prompt, new_tokens=GENERATE_TOKENS,
                                          prefill_s=round(prefill, 6), total_s=round(total, 6)))
    del model, base
    return GenerationSpeed.fit(points)


def _generate(model: Any, ids: Any, new_tokens: int, device: str) -> float:
    """Seconds of one greedy generation of exactly `new_tokens` tokens per row."""
    import torch
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, num_beams=1,
                              use_cache=True, pad_token_id=0)
    mask = torch.ones_like(ids)
    _sync(device)
    start = time.perf_counter()
    model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    _sync(device)
    return time.perf_counter() - start


def _best(model: Any, ids: Any, new_tokens: int, device: str) -> float:
    """The fastest of REPEATS or more generations (while their time stays under TIMING_S)."""
    times: list[float] = []
    while len(times) < REPEATS or (sum(times) < TIMING_S and len(times) < MAX_REPEATS):
        times.append(_generate(model, ids, new_tokens, device))
    return min(times)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


USAGE = "usage: python -m tunelab.train.probe_steps RUN_YAML [--max-batch] [--steps=N] [--profile=DIR]"


def fits_step(trainer: Any, batch: int) -> bool:
    """Whether one real step at this micro-batch runs without running out of GPU memory."""
    import torch

    try:
        inject_oom_fault(batch)  # the test knob stands in for a GPU's limit on machines without one
        return bool(time_real_steps(trainer, [batch], repeats=1))
    except torch.OutOfMemoryError:
        return False
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def find_max_batch(trainer: Any, start: int, limit: int = 1024) -> int:
    """The largest micro-batch that runs a real step: doubling from `start`, then bisection; 0 if not even 1."""
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


def probe_run(pcfg: RunConfig, max_batch: bool = False, steps: int | None = None, profile: Path | None = None
              ) -> ProbeResult:
    """Warm up, then time real steps at the run's micro-batch and twice it (`max_batch`: also the largest that runs).
    `steps`: that many at the run's micro-batch alone (the GPU kit); `profile`: a directory for a profile."""
    import torch

    from tunelab.train.trainer import build_trainer

    quiet_hf_progress_bars()  # one line per shape is the probe's own progress
    assert pcfg.training is not None
    b = pcfg.training.batch_size
    cuda = torch.cuda.is_available()
    device = DeviceMemory.start(cuda)  # before the model: the NVML baseline, then the context
    trainer, _, _ = build_trainer(pcfg)
    startup = process_age_s()  # as a run measures its start-up: the process's age when it could take a step
    if steps:
        inject_oom_fault(b)
    trainer.train()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trace: list[ProbeStep] = []

    def record(_mb: int, tokens: float, seconds: float) -> None:
        trace.append(ProbeStep(tokens=tokens, seconds=round(seconds, 6), memory_gib=round(device.step_gib(), 4)))

    if steps:
        measured = time_real_steps(trainer, [b], repeats=steps, on_step=record)
        settled = not disagrees(measured)
    else:
        measured, settled = timed_rounds(trainer, sorted({b, 2 * b}))
    reserved = max(s.memory_gib for s in trace) if cuda and trace else (
        torch.cuda.max_memory_reserved() / GIB if cuda else None)
    used, context = device.used_gib(), device.context_now_gib() if cuda else None
    save_s = time_save(trainer)
    if profile is not None:
        profile_loop(trainer, profile)
    largest = find_max_batch(trainer, b) if max_batch else None
    result = _result(b, measured, reserved, cuda, library_versions())
    result.save_s = round(save_s, 4) if save_s is not None else None
    result.spread = round(spread, 4) if (spread := measured.spread()) is not None else None
    result.load, result.rounds, result.settled = measured.load, measured.rounds, settled
    result.max_micro_batch, result.steps = largest, trace
    result.startup_s = round(startup, 3) if startup is not None else None
    result.nvml_used_gib, result.cuda_context_gib = _gib(used), _gib(device.context_gib)
    result.cuda_context_after_gib = _gib(context)
    if trace:  # tokens/s over every timed step, not the fastest one
        result.tokens_per_s = round(sum(s.tokens for s in trace) / sum(s.seconds for s in trace), 2)
    del trainer  # the trainer's model and optimizer state go before evaluation's model loads
    result.generation = _generation(pcfg, cuda)
    return result


def time_save(trainer: Any) -> float | None:
    """One real checkpoint written as a mid-epoch save writes it, timed and removed; None if the disk refused it."""
    t0 = time.perf_counter()
    try:
        trainer._save_checkpoint(trainer.model, trial=None)
    except (OSError, TunelabError):  # a full scratch disk: the step timings still stand
        return None
    seconds = time.perf_counter() - t0
    shutil.rmtree(trainer.checkpoint_path(), ignore_errors=True)
    return seconds


def disagrees(timed: TimedSteps) -> bool:
    """Timings worth taking again: spread past SPREAD_LIMIT, or timed while others held the cores."""
    spread = timed.spread()
    return (spread is not None and spread > SPREAD_LIMIT) or (timed.load is not None and timed.load.contended)


def timed_rounds(trainer: Any, batches: list[int]) -> tuple[TimedSteps, bool]:
    """Timed rounds per size, up to MORE_ROUNDS more while they disagree: every timing, and whether the last agreed."""
    timed = last = time_real_steps(trainer, batches)
    for _ in range(MORE_ROUNDS):
        if not disagrees(last):
            break
        last = time_real_steps(trainer, batches, warmup=False)
        timed = timed.then(last)
    return timed, not disagrees(last)


def _generation(pcfg: RunConfig, cuda: bool) -> GenerationSpeed | None:
    """Batched generation timed as evaluation runs it; None for a VLM, whose images the probe does not have."""
    import gc

    import torch

    from tunelab.models.vlm import is_vision_language
    from tunelab.train.probe_steps import time_generation

    if is_vision_language(pcfg.model.path):
        return None
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return time_generation(pcfg, "cuda" if cuda else "cpu")


def _gib(value: float | None) -> float | None:
    return round(value, 4) if value is not None else None


def _result(b: int, measured: TimedSteps, reserved: float | None, cuda: bool, versions: dict[str, str]) -> ProbeResult:
    import statistics

    import torch

    points = [ProbePoint(micro_batch=mb, tokens=tokens, seconds=round(sec, 6), peak_allocated_gib=peak,
                         timings=[round(t, 6) for t, _ in measured.steps[mb]],
                         median_s=round(statistics.median(t for t, _ in measured.steps[mb]), 6))
              for mb, (tokens, sec, peak) in sorted(measured.fastest().items())]
    if not points:
        raise TunelabError("the training split is too small to time a single step")
    at = next((p for p in points if p.micro_batch == b), points[0])
    per_token = fixed = None
    if len(points) >= 2 and points[-1].tokens != points[0].tokens:
        per_token = max(0.0, (points[-1].seconds - points[0].seconds) / (points[-1].tokens - points[0].tokens))
        fixed = max(0.0, at.seconds - per_token * at.tokens)
    return ProbeResult(
        micro_batch=b, points=points, tokens_per_s=round(at.tokens / at.seconds, 2), per_token_s=per_token,
        fixed_s=fixed, peak_memory_gib=at.peak_allocated_gib if cuda else round(peak_rss_gib(), 3),
        memory_kind=MemoryKind.CUDA_MAX_ALLOCATED if cuda else MemoryKind.HOST_MAX_RSS,
        device=torch.cuda.get_device_name(0) if cuda else "cpu", cpu_threads=torch.get_num_threads(),
        cpu_model=None if cuda else cpu_model(),
        peak_reserved_gib=round(reserved, 3) if reserved is not None else None, versions=versions,
        gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / GIB, 2) if cuda else None)


def parse_args(args: list[str]) -> tuple[Path, bool, int | None, Path | None] | None:
    """(RUN_YAML, --max-batch, --steps, --profile) from the command line; None when it is not of USAGE's form."""
    args = list(args)
    if "--profile" in args and args.index("--profile") + 1 < len(args):  # `--profile DIR` as `--profile=DIR`
        i = args.index("--profile")
        args[i:i + 2] = [f"--profile={args[i + 1]}"]
    paths = [a for a in args if not a.startswith("-")]
    steps = [a.removeprefix("--steps=") for a in args if a.startswith("--steps=")]
    profile = [a.removeprefix("--profile=") for a in args if a.startswith("--profile=")]
    if (len(paths) != 1 or len(steps) > 1 or not all(s.isdigit() and int(s) > 0 for s in steps)
            or len(profile) > 1 or not all(profile)
            or set(args) - {*paths, "--max-batch", *(f"--steps={s}" for s in steps),
                            *(f"--profile={p}" for p in profile)}):
        return None
    return (Path(paths[0]), "--max-batch" in args, int(steps[0]) if steps else None,
            Path(profile[0]) if profile else None)


def main(argv: list[str] | None = None) -> int:
    """Probe the scratch run RUN_YAML names and write its result beside it; a failure is one line on stderr."""
    args = sys.argv[1:] if argv is None else argv
    if "--help" in args or "-h" in args:
        print(f"{USAGE}\n\n{__doc__}")
        return 0
    parsed = parse_args(args)
    if parsed is None:
        print(USAGE, file=sys.stderr)
        return 2
    run_yaml, max_batch, steps, profile = parsed
    skip_unused_packages()  # before TRL is imported
    import_job_stack(*TRAINING_STACK, record_as=Stack.TRAINING)
    try:
        pcfg = load_run_config(run_yaml)
        result = probe_run(pcfg, max_batch=max_batch, steps=steps, profile=profile)
    except TunelabError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    write_probe_results(pcfg.run_dir / PROBE_RESULTS_FILE, [(pcfg.name.removeprefix(PROBE_RUN_PREFIX), result)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
