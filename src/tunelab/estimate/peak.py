"""Peak memory of a run's training step on one device: the one entry point `estimate`, `plan`, `validate` and `init`
use, and the one rule for "fits". The figure is the simulator's; the analytic model (memory.py) is the explanation
beside it and answers alone only where the simulation cannot run, said so. What must fit is the simulated reserved
memory plus the CUDA context: that is what runs out on a GPU."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tunelab.catalog import Architecture, resolve_architecture
from tunelab.estimate.memory import MemoryEstimate, MemoryInputs, estimate_memory
from tunelab.estimate.simulator import SimulatedMemory, StepShape, simulate
from tunelab.spec.resources import Strategy

SIMULATED = "simulated: tunelab's training step"
LIMIT_BATCH = 256  # micro-batches searched (rows); a plan never wants more, and huge shapes simulate slowly
REFITS = 3  # rounds of fit-and-confirm before bisecting
FAR_BEYOND = 1.5  # the line through batches 1 and 2 crossing the budget past this × the limit: try the limit
log = logging.getLogger("tunelab")


@dataclass
class MemoryFigure:
    """GiB per device. `required_gib` (reserved + CUDA context) is compared with the GPU's memory."""

    required_gib: float
    allocated_gib: float | None
    reserved_gib: float | None
    context_gib: float
    source: str
    analytic: MemoryEstimate
    simulated: SimulatedMemory | None = None

    @property
    def peak_gib(self) -> float:
        return self.required_gib

    def breakdown(self) -> dict[str, float]:
        """Where the bytes go: simulated terms when simulated, else the analytic ones."""
        s = self.simulated
        if s is None:
            return {k: round(getattr(self.analytic, k), 3) for k in
                    ("weights_gib", "trainable_gib", "activations_gib", "logits_gib", "overhead_gib")}
        gib = 2**30
        return {"weights_gib": round(s.weights / gib, 3), "trainable_gib": round(s.trainable / gib, 3),
                "optimizer_gib": round(s.optimizer / gib, 3), "ddp_buckets_gib": round(s.ddp_buckets / gib, 3),
                "activations_gib": round(s.activations / gib, 3),
                "allocator_slack_gib": round((s.peak_reserved - s.peak_allocated) / gib, 3),
                "cuda_context_gib": round(s.context / gib, 3)}


def model_config_of(model: str | Path) -> dict[str, Any]:
    """The model's config.json (a local dir), or the built-in catalog's facts for a named model."""
    path = Path(model).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return json.loads((path / "config.json").read_text())
    return resolve_architecture(model).hf_config()


def step_shape(batch: int, max_seq_len: int, packed: bool, longest: int | None) -> StepShape:
    """The planner's worst micro-batch: packed rows of max_seq_len, or rows padded to the longest example."""
    if packed or longest is None:
        return StepShape(batch, max_seq_len, packed=packed)
    return StepShape(batch, min(longest, max_seq_len), packed=False)


def predict_peak(model: str | Path, inputs: MemoryInputs, shape: StepShape, processes: int = 1,
                 strategy: Strategy | None = None, arch: Architecture | None = None) -> MemoryFigure:
    """Simulated peak of one device (the analytic model as explanation, or as fallback with the reason)."""
    arch = arch or resolve_architecture(model)
    if inputs.images_per_example:  # the images ride in every row (their tokens inside the row's length)
        shape = replace(shape, images_per_row=inputs.images_per_example, image_grid=inputs.image_grid)
    shards = processes if strategy == Strategy.FSDP else 1
    analytic = estimate_memory(arch, shape.tokens, inputs, shards=shards)
    try:
        sim = simulate(model_config_of(model), inputs.step_config(), shape, processes, strategy)
    except Exception as exc:  # noqa: BLE001 - a plan must not fail because a simulation could not run
        log.debug("simulation failed", exc_info=True)
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
        return MemoryFigure(analytic.peak_gib, None, None, 0.0, f"analytic model (simulation failed: {reason})",
                            analytic)
    return MemoryFigure(sim.required_gib, sim.allocated_gib, sim.reserved_gib, sim.context / 2**30, SIMULATED,
                        analytic, sim)


def fits(figure: MemoryFigure, gpu_memory_gib: float, safety: float = 1.0) -> bool:
    """The one rule: reserved + context within `safety` × the GPU's memory."""
    return figure.required_gib <= gpu_memory_gib * safety


def largest_micro_batch(model: str | Path, inputs: MemoryInputs, budget_gib: float, max_seq_len: int,
                        packed: bool, longest: int | None, limit: int = LIMIT_BATCH, processes: int = 1,
                        strategy: Strategy | None = None) -> int:
    """Largest micro-batch whose simulated requirement fits `budget_gib` (0 if not even 1 does).

    Memory is at most quadratic in the micro-batch, so simulations at 1, 2, 4 predict the crossing and simulations
    around it confirm; cheap rows try the limit right after 2. A miss refits on every point seen, and after REFITS
    rounds a bisection settles it (allocator rounding is not polynomial)."""
    arch = resolve_architecture(model)
    seen: dict[int, float] = {}

    def need(b: int) -> float:
        if b not in seen:
            seen[b] = predict_peak(model, inputs, step_shape(b, max_seq_len, packed, longest), processes,
                                   strategy, arch).required_gib
        return seen[b]

    if need(1) > budget_gib:
        return 0
    if limit >= 2 and _far_below(need(1), need(2), budget_gib, limit) and need(limit) <= budget_gib:
        return limit  # rows cost little next to the budget: the limit fits, nothing between needs simulating
    if limit >= 4:
        need(4)
    lo, hi = 1, limit + 1
    for _ in range(REFITS):  # each round fits every point seen so far: the guesses close in on the crossing
        hi = min([b for b, v in seen.items() if v > budget_gib], default=hi)
        lo = max([b for b, v in seen.items() if v <= budget_gib and b < hi], default=lo)
        if hi - lo <= 1:
            return lo
        guess = min(max(_predicted_crossing(sorted(seen.items()), budget_gib, limit), lo), hi - 1)
        for b in (guess, guess + 1):
            if lo <= b < hi:
                lo, hi = (max(lo, b), hi) if need(b) <= budget_gib else (lo, min(hi, b))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if need(mid) <= budget_gib else (lo, mid)
    return lo


def _far_below(one: float, two: float, budget: float, limit: int) -> bool:
    """Whether the line through micro-batches 1 and 2 stays within the budget to FAR_BEYOND × the limit: then the limit
    is simulated next, which settles the search unless memory grows much faster than linearly."""
    return one + (two - one) * (FAR_BEYOND * limit - 1) <= budget


def _predicted_crossing(points: list[tuple[int, float]], budget: float, limit: int) -> int:
    """The b just before the fitted curve through `points` first exceeds the budget; a concave fit (allocator rounding)
    is replaced by the line through the last two points, since memory never falls as b grows."""
    import numpy as np

    xs, ys = np.array([p[0] for p in points], float), np.array([p[1] for p in points], float)
    coef = np.polyfit(xs, ys, min(2, len(points) - 1))
    if len(points) < 3 or coef[0] < 0:
        coef = np.polyfit(xs[-2:], ys[-2:], 1) if len(points) >= 2 else np.array([0.0, ys[0]])
    grid = np.arange(1, limit + 1, dtype=float)
    over = np.nonzero(np.polyval(coef, grid) > budget)[0]
    return int(grid[over[0]]) - 1 if len(over) else limit
