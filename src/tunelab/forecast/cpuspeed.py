"""A plan always answers: with no history and no probe of this CPU, the plan times a few of the run shape's own
training micro-batches here — the model built from its config.json with random weights (speed does not depend
on their values), the run's LoRA adapters, its micro-batch of random tokens, forward, backward and AdamW — and
prices the run at that speed; the same model's forward without gradients (a validation's unit) and one save of its
adapter and optimizer state (a save's bulk) are timed beside it (forecast/firstcontact.py prices the run's
validations and saves with them, forecast/loopcost.py what the job's loop adds).
A run's own micro-batches timed are kind `timed`, with a wide interval; `tunelab probe` narrows it. A large model
(or a vision-language one), whose step would take the plan minutes, gets a matrix product at its hidden size timed
instead, priced by the FLOPs model at an assumed MATMUL_EFFICIENCY of it: one timed constant in a model, so kind
`model`, whose interval is wider (forecast/interval.py), its source saying what was timed and what assumed.

The machine's load over the timed steps is measured (cpuload.py): a round whose steps disagree by more than the
probe's SPREAD_LIMIT, or that others' work slowed, is timed again (up to MORE_ROUNDS more, as the probe does), and
the round that had most of the cores is the figure; still contended, its time is divided by the slowdown the load
predicts and the source says so (and plan's warnings). Timings are cached per machine, thread count, model config
and shape (diskcache.py), so a second plan does not time again — a contended one only for CONTENDED_KEEP_S.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from importlib.metadata import version
from statistics import median
from typing import Any

from tunelab.catalog import resolve_architecture
from tunelab.diskcache import cached_json, file_digests, this_environment
from tunelab.forecast.speed import flops_per_token
from tunelab.forecast.speedhistory import RECOMPUTE_FACTOR, contention_note
from tunelab.host.cpuload import LoadMeter, LoadWindow
from tunelab.models.lora import lora_config
from tunelab.models.vlm import is_vision_language
from tunelab.rundir.config import RunConfig
from tunelab.rundir.estimate import SourceKind
from tunelab.rundir.probe import MORE_ROUNDS, SPREAD_LIMIT
from tunelab.stats.timing import range_sigma, timing_spread

TIME_BUDGET_S = 1.0  # timed steps after the warm-up, at most (and at least MIN_STEPS of them)
MIN_STEPS = 3
MAX_TIMED_PARAMETERS = 400e6  # above this, a step on a CPU takes too long for a plan: a matmul instead
MATMUL_EFFICIENCY = 0.5  # a training step reaches about half a plain matrix product's FLOP/s (assumed)
CONTENDED_KEEP_S = 600.0  # a timing taken under contention is reused this long, then timed again


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


def timed_cpu_speed(cfg: RunConfig, tokens_per_microbatch: int, threads: int | None) -> TimedSpeed:
    """The run shape's training speed on this CPU: its micro-batches timed here, or (too large to time, or a VLM)
    the FLOPs model over a matrix product timed here."""
    t = cfg.training
    assert t is not None
    arch = resolve_architecture(cfg.model.path)
    batch = max(1, t.batch_size)
    seq = max(8, tokens_per_microbatch // batch)
    key = [socket.gethostname(), os.cpu_count(), threads, file_digests([f"{cfg.model.path}/config.json"]), batch,
           seq, t.lora_rank, t.lora_targets_text, sorted(t.modules_to_save), t.gradient_checkpointing,
           "forward+save"]  # what an entry holds: older entries lack the forward and the save

    if arch.parameters <= MAX_TIMED_PARAMETERS and not is_vision_language(cfg.model.path):  # a VLM: its matmul
        got = cached_json("cpu-step", key, lambda: _time_steps(cfg, batch, seq, threads), keep=_uncontended)
        slowdown = float(got.get("slowdown") or 1.0)
        contention = contention_note(slowdown) if got.get("contended") else ""
        tps = batch * seq / got["median_s"] * (slowdown if contention else 1.0)
        rounds = int(got.get("rounds") or 1)
        source = (f"timed here: {got['steps']} training micro-batches of {batch} × {seq} tokens of this model "
                  f"(random weights, its LoRA) took {got['median_s'] * 1e3:.1f} ms each (median, spread "
                  f"{got['spread']:.0%}{f', {rounds} rounds' if rounds > 1 else ''})"
                  f"{f'; {contention}' if contention else ''}; `tunelab probe` measures the real run")
        factor = slowdown if contention else 1.0
        forward, save = got.get("forward_s"), got.get("save_s")
        return TimedSpeed(tps, source, range_sigma(got["spread"]), contention,
                          forward / factor if forward else None, save / factor if save else None)
    flops = cpu_flops(arch.hidden, threads)
    rate = flops * MATMUL_EFFICIENCY
    recompute = RECOMPUTE_FACTOR if t.gradient_checkpointing else 1.0
    tps = rate / (flops_per_token(arch, seq) * recompute)
    source = (f"model: a {arch.hidden}² matrix product timed here ran at {flops / 1e9:,.1f} GFLOP/s; training "
              f"at {MATMUL_EFFICIENCY:.0%} of it (assumed) over the FLOPs per token"
              f"{f', gradient checkpointing ×{RECOMPUTE_FACTOR:g} (assumed)' if recompute != 1.0 else ''}; "
              "`tunelab probe` measures the real run")
    return TimedSpeed(tps, source, 0.0, kind=SourceKind.MODEL)


def cpu_flops(hidden: int, threads: int | None) -> float:
    """This CPU's float32 FLOP/s on a product at this hidden size, timed once per machine and thread count."""
    key = [socket.gethostname(), os.cpu_count(), threads, hidden]
    return float(cached_json("cpu-matmul", key, lambda: _time_matmul(hidden, threads))["flops"])


def _threads(threads: int | None) -> tuple[Any, int]:
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    return torch, before


def _time_steps(cfg: RunConfig, batch: int, seq: int, threads: int | None) -> dict[str, Any]:
    """Median seconds of one micro-batch's forward, backward and optimizer step, and their spread."""
    with warnings.catch_warnings():
        return _timed_steps(cfg, batch, seq, threads)


def _uncontended(timing: dict[str, Any]) -> bool:
    """A timing worth keeping: an uncontended one for good; one taken while others held the cores for
    CONTENDED_KEEP_S (the plans of those minutes share it, corrected; a later plan times again)."""
    return not timing.get("contended") or time.time() - float(timing.get("timed_at") or 0) < CONTENDED_KEEP_S


def _timed_steps(cfg: RunConfig, batch: int, seq: int, threads: int | None) -> dict[str, Any]:
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM


    t = cfg.training
    assert t is not None
    torch, before = _threads(threads)
    try:
        warnings.simplefilter("ignore", FutureWarning)  # libraries' renamed APIs: a measurement, not a run's log
        torch.manual_seed(0)
        config = AutoConfig.from_pretrained(cfg.model.path)
        config.use_cache = False  # training's setting (a KV cache is for generation; with checkpointing it warns)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        if t.gradient_checkpointing:  # transformers 5's name (the old one warns)
            model.activation_checkpointing_enable()
            model.enable_input_require_grads()
        model = get_peft_model(model, lora_config(t.lora_rank, t.effective_lora_alpha, 0.0, t.lora_target_modules,
                                                  list(t.modules_to_save)))
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        ids = torch.randint(0, config.vocab_size, (batch, seq))

        def step() -> float:
            t0 = time.perf_counter()
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return time.perf_counter() - t0

        step()  # warm-up: the optimizer's state, the kernels
        rounds = [_round(step)]
        while len(rounds) <= MORE_ROUNDS and rounds[-1].disagrees:  # as the probe does (train/probe_steps.py)
            rounds.append(_round(step))
        parts = _forward_and_save(torch, model, opt, ids)
    finally:
        torch.set_num_threads(before)
    best = min(rounds, key=lambda r: (r.slowdown, r.median_s))  # the round that had the most of the cores
    return {"median_s": best.median_s, "spread": best.spread, "steps": len(best.times), "rounds": len(rounds),
            "timed_at": time.time(), **parts,
            "slowdown": round(best.slowdown, 3), "contended": best.contended,
            "others_share": round(best.load.others_share, 4) if best.load else None}


def _forward_and_save(torch: Any, model: Any, opt: Any, ids: Any) -> dict[str, float]:
    """A validation's unit, a forward without gradients of the same micro-batch (median of MIN_STEPS), and a save's
    bulk, the adapter (with modules trained in full) and AdamW's state written to a scratch directory once."""

    model.eval()
    times = []
    with torch.no_grad():
        for _ in range(MIN_STEPS + 1):
            t0 = time.perf_counter()
            model(input_ids=ids, labels=ids)
            times.append(time.perf_counter() - t0)
    model.train()
    with tempfile.TemporaryDirectory(prefix="tunelab-save-") as scratch:
        t0 = time.perf_counter()
        model.save_pretrained(scratch)
        torch.save(opt.state_dict(), f"{scratch}/optimizer.pt")
        save = time.perf_counter() - t0
    return {"forward_s": median(times[1:]), "save_s": save}  # the first forward: warm-up


@dataclass(frozen=True)
class _Round:
    """One round of timed steps and the machine's load over them (None: not readable here)."""

    times: list[float]
    load: LoadWindow | None

    @property
    def median_s(self) -> float:
        return median(self.times)

    @property
    def spread(self) -> float:
        return timing_spread(self.times) or 0.0

    @property
    def slowdown(self) -> float:
        return self.load.slowdown if self.load is not None else 1.0

    @property
    def contended(self) -> bool:
        return self.load is not None and self.load.contended

    @property
    def disagrees(self) -> bool:
        """Worth timing again: slowest/fastest past the probe's SPREAD_LIMIT, or others held the cores."""
        return self.spread > SPREAD_LIMIT or self.contended


def _round(step: Any) -> _Round:
    """Steps timed until MIN_STEPS of them and TIME_BUDGET_S, with the load over them."""
    meter = LoadMeter.start()
    times: list[float] = []
    while len(times) < MIN_STEPS or (sum(times) < TIME_BUDGET_S and len(times) < 64):
        times.append(step())
    return _Round(times, meter.window() if meter is not None else None)


def _time_matmul(hidden: int, threads: int | None) -> dict[str, float]:
    """FLOP/s of float32 products of 512 × hidden by hidden × hidden matrices."""
    torch, before = _threads(threads)
    try:
        a, b = torch.randn(512, hidden), torch.randn(hidden, hidden)
        a @ b
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < TIME_BUDGET_S / 2:
            a @ b
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

    key = [socket.gethostname(), os.cpu_count(), this_environment(), version("torch"), version("transformers")]
    imports = float(cached_json("job-imports", key, (lambda: {"seconds": imports_s}) if imports_s else run)["seconds"])
    load = parameters * 4 / (ASSUMED_LOAD_GBS * 1e9)
    return imports + load, (f"start-up: a fresh interpreter importing {IMPORTED} took {imports:.1f} s here, + "
                            f"{load:.1f} s reading the weights at {ASSUMED_LOAD_GBS:g} GB/s (assumed)")
