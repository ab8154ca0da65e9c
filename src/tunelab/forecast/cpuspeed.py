"""A plan always answers: with no history and no probe of this CPU, the plan times a few training micro-batches of
the run's model here — built from its config.json with random weights, the run's LoRA, random tokens, forward (the
loss on the share of positions the run's loss reads, models/loss_positions.py), backward and AdamW — and prices the
run at that speed; one save (a save's bulk) and, for a run that validates, a forward without gradients (a
validation's unit, its loss on the same kept logits) are timed beside it (forecast/runs.py prices them,
forecast/loopcost.py the job's loop).
What is timed is the run's micro-batch capped at CALIBRATION_TOKENS (calibration_shape), and the run's own rows,
length, LoRA rank and kept logits are priced from it by FLOPs per token (speed.py): a real model's full micro-batch
took a sweep's first plan minutes and GBs (docs/benchmarks.md). One model serves every thread count the plan prices
together (priced_together). Kind `timed`, with a wide interval; `tunelab probe` narrows it. A large model (or a VLM)
gets a matrix product at its hidden size timed instead, priced by the FLOPs model at an assumed MATMUL_EFFICIENCY:
kind `model`, a wider interval (forecast/interval.py), its source saying what was timed and what assumed.

The machine's load over the timed steps is measured (cpuload.py): a round whose steps disagree past the probe's
SPREAD_LIMIT, or that others slowed, is timed again (up to MORE_ROUNDS more, until two uncontended rounds' medians
agree: step_rounds.py), the round with most of the cores is the figure, and a still contended one is divided by the
predicted slowdown, said in its source and the plan's warnings. Timings are cached per machine, thread count, model config and shape (diskcache.py): a second plan does
not time again — a contended timing only for CONTENDED_KEEP_S.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import version
from statistics import median
from typing import Any

from tunelab.catalog import Architecture, resolve_architecture
from tunelab.console import working
from tunelab.diskcache import cached_json, file_digests, store_json, stored_json, this_environment
from tunelab.estimate.memory import lora_params
from tunelab.forecast import loopjob
from tunelab.forecast.planscope import priced_counts, still_fresh
from tunelab.forecast.speed import flops_per_token, forward_flops_per_token, step_flops_per_token
from tunelab.forecast.speedhistory import RECOMPUTE_FACTOR, contention_note
from tunelab.forecast.step_rounds import MIN_STEPS, TIME_BUDGET_S, another_round, timed_round
from tunelab.host.machine import machine_key
from tunelab.models.linear_kernel import MatmulKernel, linear_mode
from tunelab.models.lora import lora_config
from tunelab.models.loss_positions import calibration_labels, kept_logits_inputs
from tunelab.models.vlm import is_vision_language
from tunelab.rundir.config import RunConfig
from tunelab.rundir.estimate import SourceKind
from tunelab.stats.timing import range_sigma

MAX_TIMED_PARAMETERS = 400e6  # above this, a step on a CPU takes too long for a plan: a matmul instead
MATMUL_EFFICIENCY = 0.5  # a training step reaches about half a plain matrix product's FLOP/s (assumed)
CALIBRATION_TOKENS = 512  # the most tokens a timed micro-batch holds: a larger run's is priced per token from it

@dataclass(frozen=True)
class TimedSpeed:
    """Training tokens/s found on this CPU, in words, the spread of the timed steps (log-space σ) and, where other
    work held the cores while they were timed, the line that says so (the speed is then corrected by it); `kind`:
    TIMED for the run's own micro-batches, MODEL for the FLOPs model over a timed matrix product."""

    tokens_per_s: float
    source: str
    spread: float
    contention: str = ""
    forward_s: float | None = None  # one micro-batch's forward without gradients (a validation's unit), timed
    save_s: float | None = None  # the shape's adapter and optimizer state written once (a save's bulk), timed
    kind: SourceKind = SourceKind.TIMED


def calibration_shape(batch: int, seq: int) -> tuple[int, int]:
    """The micro-batch timed for a run's `batch` rows of `seq` tokens: its own up to CALIBRATION_TOKENS; past them,
    rows of its length (at most CALIBRATION_TOKENS), as many as fit. Why: a step's time per token on a CPU hardly
    moves with the rows, while a full micro-batch of a real model takes the plan minutes and GBs per timing."""
    if batch * seq <= CALIBRATION_TOKENS:
        return batch, seq
    rows = min(seq, CALIBRATION_TOKENS)
    return max(1, CALIBRATION_TOKENS // rows), rows


def timed_cpu_speed(cfg: RunConfig, tokens_per_microbatch: int, threads: int | None, kept: float = 1.0) -> TimedSpeed:
    """The run shape's training speed on this CPU: its micro-batches (capped, calibration_shape) timed here, their
    loss reading the logits of `kept` of the positions as the job's does (models/loss_positions.py), or (too large to
    time, or a VLM) the FLOPs model over a matrix product timed here."""
    t = cfg.training
    assert t is not None
    arch = resolve_architecture(cfg.model.path)
    batch = max(1, t.batch_size)
    seq = max(8, tokens_per_microbatch // batch)
    if arch.parameters <= MAX_TIMED_PARAMETERS and not is_vision_language(cfg.model.path):  # a VLM: its matmul
        return _timed_shape(cfg, arch, batch, seq, threads, _Ask(round(kept, 2), bool(t.validation_every_steps)))
    flops = cpu_flops(arch.hidden, threads)
    rate = flops * MATMUL_EFFICIENCY
    recompute = RECOMPUTE_FACTOR if t.gradient_checkpointing else 1.0
    tps = rate / (flops_per_token(arch, seq) * recompute)
    source = (f"model: a {arch.hidden}² matrix product timed here ran at {flops / 1e9:,.1f} GFLOP/s; training "
              f"at {MATMUL_EFFICIENCY:.0%} of it (assumed) over the FLOPs per token"
              f"{f', gradient checkpointing ×{RECOMPUTE_FACTOR:g} (assumed)' if recompute != 1.0 else ''}; "
              "`tunelab probe` measures the real run")
    return TimedSpeed(tps, source, 0.0, kind=SourceKind.MODEL)


@dataclass(frozen=True)
class _Ask:
    """What a run asks of its shape's timing: the share of logits its loss reads; whether it validates (a forward
    timed too: a quarter of a cold plan's timing, only for a run that needs it)."""

    kept: float
    forward: bool

    def met_by(self, timing: Any) -> bool:
        return _kept(timing) and (not self.forward or timing.get("forward_s") is not None)


def _step_key(cfg: RunConfig, batch: int, seq: int, threads: int | None) -> list[Any]:
    """What a timing depends on; not the LoRA rank nor the share of logits kept (each priced from the timed one's,
    _timed_shape)."""
    t = cfg.training
    assert t is not None
    return [*machine_key(), threads, file_digests([f"{cfg.model.path}/config.json"]), batch,
            seq, t.lora_targets_text, sorted(t.modules_to_save), t.gradient_checkpointing, "kept-forward+save+rank+linear",
            linear_mode()]


def _timed_shape(cfg: RunConfig, arch: Architecture, batch: int, seq: int, threads: int | None,
                 ask: _Ask) -> TimedSpeed:
    """The run's speed from its calibration micro-batch's timing (cached per shape and thread count), priced up to
    its own rows, length and rank by FLOPs per token (speed.py: attention grows with the length, LoRA with the
    rank); the forward likewise, the save as timed."""
    t = cfg.training
    assert t is not None
    cal_batch, cal_seq = calibration_shape(batch, seq)
    got = cached_json("cpu-step", _step_key(cfg, cal_batch, cal_seq, threads),
                      lambda: _time_with_others(cfg, cal_batch, cal_seq, threads, ask), keep=ask.met_by)
    kept = ask.kept
    slowdown = float(got.get("slowdown") or 1.0)
    contention = contention_note(slowdown) if got.get("contended") else ""
    factor = slowdown if contention else 1.0
    timed_rank = int(got.get("lora_rank") or t.lora_rank)
    targets = tuple(t.lora_target_modules) if isinstance(t.lora_target_modules, list) else t.lora_target_modules
    lora_run = lora_params(arch, t.lora_rank, targets)
    lora_timed = lora_params(arch, timed_rank, targets)
    timed_kept = float(got.get("kept", 1.0))  # an entry from before the loss kept logits: every position's
    train_ratio = (step_flops_per_token(arch, seq, lora_run, kept)
                   / step_flops_per_token(arch, cal_seq, lora_timed, timed_kept))
    forward_ratio = (forward_flops_per_token(arch, seq, lora_run, kept)
                     / forward_flops_per_token(arch, cal_seq, lora_timed, timed_kept))
    tps = cal_batch * cal_seq / got["median_s"] * factor / train_ratio
    rounds = int(got.get("rounds") or 1)
    priced = (f"; this run's {batch} × {seq} at rank {t.lora_rank}{f', loss on {kept:.0%}' if kept < 1.0 else ''} "
              f"priced from it by FLOPs per token (×{train_ratio:.3f})"
              if (cal_batch, cal_seq, timed_rank, timed_kept) != (batch, seq, t.lora_rank, kept) else "")
    logits = f", the loss on {timed_kept:.0%} of the positions" if timed_kept < 1.0 else ""
    logits += ", linear layers by oneDNN" if got.get("linear") == MatmulKernel.ONEDNN else ""
    source = (f"timed here: {got['steps']} training micro-batches of {cal_batch} × {cal_seq} tokens of this model "
              f"(random weights, LoRA rank {timed_rank}{logits}) took {got['median_s'] * 1e3:.1f} ms each (median, spread "
              f"{got['spread']:.0%}{f', {rounds} rounds' if rounds > 1 else ''}){priced}"
              f"{f'; {contention}' if contention else ''}; `tunelab probe` measures the real run")
    forward, save = got.get("forward_s"), got.get("save_s")
    scale = batch * seq / (cal_batch * cal_seq) * forward_ratio
    return TimedSpeed(tps, source, range_sigma(got["spread"]), contention,
                      forward * scale / factor if forward else None, save / factor if save else None)


def _time_with_others(cfg: RunConfig, batch: int, seq: int, threads: int | None, ask: _Ask) -> dict[str, Any]:
    """`threads`' timing; the other counts priced together that no kept entry has are timed on the same model,
    right after, and kept under their own keys."""
    others = [n for n in dict.fromkeys(priced_counts()) if n != threads
              and not ask.met_by(stored_json("cpu-step", _step_key(cfg, batch, seq, n)))]
    counts: list[int | None] = [threads, *others] if threads else [threads]
    with working("timing model {}'s training step ({} × {} tokens) at {} thread(s) here, for the plan's time "
                 "(kept for later plans)", cfg.model.name, batch, seq, thread_words(counts)):
        got = _time_steps(cfg, batch, seq, counts, ask)
    for n in others:
        if _uncontended(got[n]):
            store_json("cpu-step", _step_key(cfg, batch, seq, n), got[n])
    return got[threads]


def _kept(stored: Any) -> bool:
    return isinstance(stored, dict) and _uncontended(stored)


def thread_words(counts: Iterable[int | None]) -> str:
    """Thread counts in words ("1 and 2"; None: torch's default)."""
    words = ["torch's default" if n is None else str(n) for n in counts]
    return " and ".join(words) if len(words) < 3 else ", ".join(words[:-1]) + " and " + words[-1]


def cpu_flops(hidden: int, threads: int | None) -> float:
    """This CPU's float32 FLOP/s on a product at this hidden size, timed once per machine and thread count."""
    key = [*machine_key(), threads, hidden, linear_mode(), "linear-kernel"]
    return float(cached_json("cpu-matmul", key, lambda: _time_matmul(hidden, threads))["flops"])


def _threads(threads: int | None) -> tuple[Any, int]:
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    return torch, before


def _uncontended(timing: dict[str, Any]) -> bool:
    """A timing worth keeping: an uncontended one for good; one taken while others held the cores for
    CONTENDED_KEEP_S (the plans of those minutes share it, corrected; a later plan times again)."""
    return not timing.get("contended") or still_fresh(float(timing.get("timed_at") or 0))


def _time_steps(cfg: RunConfig, batch: int, seq: int, counts: list[int | None],
                ask: _Ask) -> dict[int | None, dict[str, Any]]:
    """Each thread count's timing of one micro-batch's forward, backward and optimizer step (median, spread, load),
    one after the other on one model built once."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # libraries' renamed APIs: a measurement, not a run's log
        from tunelab.models.cpu_linear import kernel_of

        model, opt, ids = _build(cfg, batch, seq)
        kernel = kernel_of(model).value
        labels = calibration_labels(ids, ask.kept)
        loopjob.settle()  # the loop's measuring job started ahead: its imports end before a step is timed
        return {n: {**_timed_at(model, opt, ids, labels, n, ask.forward, warm_up=i == 0),
                    "kept": ask.kept if labels is not ids else 1.0,
                    "linear": kernel,
                    "lora_rank": cfg.training.lora_rank if cfg.training else None}
                for i, n in enumerate(counts)}


def _build(cfg: RunConfig, batch: int, seq: int) -> tuple[Any, Any, Any]:
    """The run's model from its config.json (random weights, seed 0) with its LoRA, AdamW over what trains, and a
    micro-batch of `batch` × `seq` random tokens."""
    import torch
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from tunelab.models.cpu_linear import accelerate

    t = cfg.training
    assert t is not None
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(cfg.model.path)
    config.use_cache = False  # training's setting (a KV cache is for generation; with checkpointing it warns)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    accelerate(model)  # the job's linear kernel, chosen before its LoRA as the job's (models/cpu_linear.py)
    if t.gradient_checkpointing:  # transformers 5's name (the old one warns)
        model.activation_checkpointing_enable()
        model.enable_input_require_grads()
    model = get_peft_model(model, lora_config(t.lora_rank, t.effective_lora_alpha, 0.0, t.lora_target_modules,
                                              list(t.modules_to_save)))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return model, opt, torch.randint(0, config.vocab_size, (batch, seq))


def _timed_at(model: Any, opt: Any, ids: Any, labels: Any, threads: int | None, forward: bool,
              warm_up: bool = True) -> dict[str, Any]:
    """One thread count's rounds of timed steps (again while one disagrees, as the probe does), a save and (asked) a
    forward; the round that had the most of the cores is the figure. `warm_up`: one untimed step first — only the
    model's first count needs it (the optimizer's state, the kernels): a second count's first step is as fast as its
    next (SmolLM2, 1 × 512, 2 then 1 thread: 2.01, 1.84, 1.75 s, then 3.00, 2.95, 2.95 s), and its warm-up was
    a tenth of a cold plan."""
    torch, before = _threads(threads)
    try:
        def step() -> float:
            t0 = time.perf_counter()
            model(input_ids=ids, labels=labels, **kept_logits_inputs(labels)).loss.backward()  # as the job's loss
            opt.step()
            opt.zero_grad(set_to_none=True)
            return time.perf_counter() - t0

        if warm_up:
            step()  # the optimizer's state, the kernels, the thread pool
        rounds = [timed_round(step)]
        while another_round(rounds):
            rounds.append(timed_round(step))
        parts = _forward_and_save(torch, model, opt, ids, labels if forward else None)
    finally:
        torch.set_num_threads(before)
    best = min(rounds, key=lambda r: (r.slowdown, r.median_s))  # the round that had the most of the cores
    return {"median_s": best.median_s, "spread": best.spread, "steps": len(best.times), "rounds": len(rounds),
            "timed_at": time.time(), **parts,
            "slowdown": round(best.slowdown, 3), "contended": best.contended,
            "others_share": round(best.load.others_share, 4) if best.load else None}


def _forward_and_save(torch: Any, model: Any, opt: Any, ids: Any, labels: Any) -> dict[str, float]:
    """A save's bulk, the adapter (with modules trained in full) and AdamW's state written to a scratch directory
    once, and (labels given) a validation's unit, a forward without gradients of the same micro-batch, its loss
    reading the logits the training step's does (median of MIN_STEPS)."""
    model.eval()
    times = []
    with torch.no_grad():
        for _ in range(MIN_STEPS + 1 if labels is not None else 0):
            t0 = time.perf_counter()
            model(input_ids=ids, labels=labels, **kept_logits_inputs(labels))
            times.append(time.perf_counter() - t0)
    model.train()
    with tempfile.TemporaryDirectory(prefix="tunelab-save-") as scratch:
        t0 = time.perf_counter()
        model.save_pretrained(scratch)
        torch.save(opt.state_dict(), f"{scratch}/optimizer.pt")
        save = time.perf_counter() - t0
    return {"save_s": save, **({"forward_s": median(times[1:])} if times else {})}  # the first forward: warm-up


def _time_matmul(hidden: int, threads: int | None) -> dict[str, float]:
    """FLOP/s of float32 products of 512 × hidden by hidden × hidden matrices, by the kernel a job's linear layers
    would use here (models/cpu_linear.py)."""
    torch, before = _threads(threads)
    loopjob.settle()
    try:
        from tunelab.models.cpu_linear import product

        a, b = torch.randn(512, hidden), torch.randn(hidden, hidden)
        multiply = product(hidden, hidden)
        multiply(a, b)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < TIME_BUDGET_S / 2:
            multiply(a, b)
            n += 1
        seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(before)
    return {"flops": 2 * 512 * hidden * hidden * n / seconds}


IMPORTED = "torch, transformers, peft, trl, datasets"  # what a training job imports before it loads anything
ASSUMED_LOAD_GBS = 1.0  # reading a model's weights from disk, GB/s (assumed)


def timed_startup(model_path: str, parameters: int, imports_s: float | None = None) -> tuple[float, str]:
    """A job's start-up with nothing measured: a fresh interpreter importing the training stack, timed here
    (cached per machine and versions; `imports_s`: one the loop's measuring job just took, forecast/loopcost.py,
    kept instead of starting another), plus the model's weights read at ASSUMED_LOAD_GBS."""
    def run() -> dict[str, float]:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {IMPORTED}"], check=True, capture_output=True)
        return {"seconds": time.perf_counter() - t0}

    imports = float(cached_json("job-imports", _job_imports_key(), (lambda: {"seconds": imports_s}) if imports_s
                                else run)["seconds"])
    load = parameters * 4 / (ASSUMED_LOAD_GBS * 1e9)
    return imports + load, (f"start-up: a fresh interpreter importing {IMPORTED} took {imports:.1f} s here, + "
                            f"{load:.1f} s reading the weights at {ASSUMED_LOAD_GBS:g} GB/s (assumed)")


def _job_imports_key() -> list[Any]:
    return [*machine_key(), this_environment(), version("torch"), version("transformers")]


def kept_job_import() -> float | None:
    """The training stack's import a plan timed here for a job's start-up (timed_startup), None before one did: what
    a machine's first plan knows of it before any job recorded its own (tunelab/jobimports.py)."""
    got = stored_json("job-imports", _job_imports_key())
    try:
        return float(got["seconds"]) if got else None
    except (KeyError, TypeError, ValueError):
        return None
