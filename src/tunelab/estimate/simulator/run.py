"""One simulation: build, materialize on fake tensors, run the steps, read the tracker; cached.

DDP runs the same step on every device plus its gradient buckets (simulated). FSDP is derived from the simulated step
(sharding.py). The one-device step is cached apart from the figures of a process count: one process and every FSDP
count share it."""

from __future__ import annotations

import functools
import hashlib
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from tunelab.compat import library_versions, quiet_known_library_warnings
from tunelab.diskcache import cached_json
from tunelab.estimate.simulator.figures import CUDA_CONTEXT_GIB, GIB, SimulatedMemory
from tunelab.estimate.simulator.sharding import OneDeviceStep, largest_layer_bytes, parameter_shapes
from tunelab.estimate.simulator.spec import StepConfig, StepShape
from tunelab.spec.resources import Strategy

EXTRAPOLATE_ABOVE_LAYERS = 4
SAMPLE_LAYERS = (2, 4)


@functools.cache
def _loaded_versions() -> tuple[tuple[str, str], ...]:
    """library_versions() read once a process (each read scans the installed packages): the libraries a process has
    imported do not change under it."""
    return tuple(library_versions().items())


def _versions() -> dict[str, str]:
    return dict(_loaded_versions())  # a dict of its own per figure or key


@functools.cache
def _code_stamp() -> str:
    """The simulator's code, hashed once a process: the code a process runs is the code it imported."""
    here = Path(__file__).parent
    digest = hashlib.sha256()
    # the simulator runs models/ too (the LoRA config, the k-bit preparation, the attention functions)
    for path in sorted(here.glob("*.py")) + sorted((here.parent.parent / "models").glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def simulate(model_config: dict[str, Any], c: StepConfig, shape: StepShape, processes: int = 1,
             strategy: Strategy | None = None, exact: bool = False) -> SimulatedMemory:
    """Simulated peak memory of one device for this model, config and micro-batch (cached); exact: every layer."""
    c = replace(c, gradient_accumulation_steps=min(c.gradient_accumulation_steps, 2))  # 2 or more: alike
    key = {"model": model_config, "config": c.to_dict(), "shape": shape.to_dict(), "processes": processes,
           "strategy": strategy, "exact": exact, "versions": _versions(), "code": _code_stamp()}
    return _read(cached_json("memsim", key,
                             lambda: _simulate(model_config, c, shape, processes, strategy, exact).to_dict()))


def _read(value: dict[str, Any]) -> SimulatedMemory:
    return SimulatedMemory(**{**value, "strategy": Strategy.read(value["strategy"])})


def _cached_step(model_config: dict[str, Any], c: StepConfig, shape: StepShape, ddp: bool) -> OneDeviceStep:
    """The one-device step (with DDP's buckets or not), cached: every process count without them shares it."""
    key = {"model": model_config, "config": c.to_dict(), "shape": shape.to_dict(), "ddp": ddp,
           "versions": _versions(), "code": _code_stamp()}
    value = cached_json("memstep", key, lambda: _one_device_step(model_config, c, shape, ddp).to_dict())
    return OneDeviceStep.from_dict(value, _read(value["sim"]))


def _simulate(model_config: dict[str, Any], c: StepConfig, shape: StepShape, processes: int,
              strategy: Strategy | None, exact: bool = False) -> SimulatedMemory:
    """Decoder layers are alike, so every byte count is affine in their number: deep models are simulated at 2 and 4
    layers and each phase's peak extrapolated (exact for identical layers; tests compare full simulations)."""
    t0 = time.perf_counter()
    layers = _layers(model_config)
    ddp = strategy == Strategy.DDP and processes > 1
    if exact or layers is None or layers <= EXTRAPOLATE_ABOVE_LAYERS:
        sim, _ = _cached_step(model_config, c, shape, ddp).per_device(processes, strategy)
    else:
        (a, pa), (b, pb) = (_cached_step(_with_layers(model_config, n), c, shape, ddp).per_device(processes, strategy)
                            for n in SAMPLE_LAYERS)
        sim = _extrapolate(a, pa, b, pb, layers)
    sim.seconds = round(time.perf_counter() - t0, 3)
    return sim


def _layers(config: dict[str, Any]) -> int | None:
    inner = config.get("text_config", config)
    n = inner.get("num_hidden_layers")
    return int(n) if n is not None else None


def _with_layers(config: dict[str, Any], n: int) -> dict[str, Any]:
    def cut(c: dict[str, Any]) -> dict[str, Any]:
        c = {**c, "num_hidden_layers": n}
        if isinstance(c.get("layer_types"), list):
            c["layer_types"] = c["layer_types"][:n]
        return c

    return {**config, "text_config": cut(config["text_config"])} if "text_config" in config else cut(config)


def _extrapolate(a: SimulatedMemory, pa: dict[str, tuple[int, int]], b: SimulatedMemory,
                 pb: dict[str, tuple[int, int]], layers: int) -> SimulatedMemory:
    lo, hi = SAMPLE_LAYERS
    k = (layers - lo) / (hi - lo)

    def line(x: float, y: float) -> int:
        return int(round(x + (y - x) * k))

    phases = {p: (line(pa[p][0], pb[p][0]), line(pa[p][1], pb[p][1])) for p in pa if p in pb}
    top = max(phases, key=lambda p: phases[p][0])
    out = SimulatedMemory(**a.to_dict())
    for name in ("weights", "trainable", "optimizer", "ddp_buckets", "trainable_params"):
        setattr(out, name, line(getattr(a, name), getattr(b, name)))
    if a.sharded_frozen is not None and b.sharded_frozen is not None:  # layers alike: exact in depth
        out.sharded_frozen = line(a.sharded_frozen, b.sharded_frozen)
        out.sharded_trainable = line(a.sharded_trainable or 0, b.sharded_trainable or 0)
    out.peak_allocated, out.peak_phase = phases[top][0], top
    # reserved is not affine in depth (segments are reused differently): the larger of the per-phase linear
    # extrapolation and the extrapolated allocated peak plus the larger sample's slack; against full
    # simulations this stays within a few per cent (the references benchmark simulates in full)
    slack = max(a.peak_reserved - a.peak_allocated, b.peak_reserved - b.peak_allocated)
    out.peak_reserved = max(max(v[1] for v in phases.values()), out.peak_allocated + slack)
    out.activations = line(a.activations, b.activations)
    out.scalar_queries = b.scalar_queries
    return out


def _simulate_exact(model_config: dict[str, Any], c: StepConfig, shape: StepShape, processes: int,
                    strategy: Strategy | None, replay: bool = True) -> tuple[SimulatedMemory, dict[str, tuple[int, int]]]:
    """One device's figures and phase peaks, every layer simulated (nothing cached)."""
    step = _one_device_step(model_config, c, shape, strategy == Strategy.DDP and processes > 1, replay)
    return step.per_device(processes, strategy)


def _one_device_step(model_config: dict[str, Any], c: StepConfig, shape: StepShape, ddp: bool,
                     replay: bool = True) -> OneDeviceStep:
    from tunelab.estimate.simulator.build import build_on_meta, materialize
    from tunelab.estimate.simulator.step import gpu_kernels, run_steps
    from tunelab.estimate.simulator.tracker import StorageTracker
    from tunelab.models.varlen import as_if_on

    quiet_known_library_warnings()
    model = build_on_meta(model_config, c)
    tracker = StorageTracker(uniform=not shape.needs_mask)
    with gpu_kernels(), as_if_on("cuda"), tracker:
        materialize(model)
        trainable = tracker.block_bytes([p for p in model.parameters() if p.requires_grad])
        layer = largest_layer_bytes(model)
        parameters = parameter_shapes(model)
        tracker.allocator.reset_peaks()
        marks = run_steps(model, c, shape, tracker, ddp=ddp, replay=replay)
    peak = tracker.peak_phase()
    weights = marks["model"] - trainable
    optimizer = marks["before_last_step"] - marks["model"] - marks["ddp_buckets"]
    sim = SimulatedMemory(
        peak_allocated=tracker.allocator.peak_allocated, peak_reserved=tracker.allocator.peak_reserved,
        context=int(CUDA_CONTEXT_GIB * GIB), weights=weights, trainable=trainable, optimizer=optimizer,
        ddp_buckets=marks["ddp_buckets"],
        activations=tracker.allocator.peak_allocated - marks["before_last_step"], peak_phase=peak.phase,
        tokens=shape.tokens,
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        scalar_queries=tracker.scalar_queries, versions=_versions())
    phases = {p.phase: (p.allocated, p.reserved) for p in tracker.peaks.values()}
    return OneDeviceStep(sim, phases, layer, parameters)
