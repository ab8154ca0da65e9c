"""Measure how a step's time (and peak memory) grows with tokens, once training is over: a step costs a fixed part plus
a part per token, and timing two more micro-batch sizes separates them, so one calibration run predicts other batch and
model sizes."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tunelab.host.cpuload import LoadMeter, LoadWindow
from tunelab.rundir.summary import STEP_COST_REPEATS, StepCost, StepPoint, step_cost_sizes
from tunelab.stats.timing import range_spread


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


@dataclass
class TimedSteps:
    """Every timed step per micro-batch ((seconds, tokens) in order), each size's peak, and the load (or None)."""

    steps: dict[int, list[tuple[float, float]]] = field(default_factory=dict)
    peaks: dict[int, float | None] = field(default_factory=dict)
    load: LoadWindow | None = None
    rounds: int = 1  # calls of time_real_steps these steps come from

    def __bool__(self) -> bool:
        return any(self.steps.values())

    def fastest(self) -> dict[int, tuple[float, float, float | None]]:
        """{micro-batch: (tokens, seconds, peak GiB)} of the fastest step per size: other work only adds time."""
        return {b: (min(rows)[1], min(rows)[0], self.peaks.get(b)) for b, rows in self.steps.items() if rows}

    def spread(self) -> float | None:
        """The largest max/min − 1 of one size's timings; None with fewer than two steps at every size."""
        spreads = [s for r in self.steps.values() if (s := range_spread(t for t, _ in r)) is not None]
        return max(spreads) if spreads else None

    def then(self, more: TimedSteps) -> TimedSteps:
        """These steps and a later round's, as one measurement (the loads summed)."""
        steps = {b: [*self.steps.get(b, []), *more.steps.get(b, [])] for b in {*self.steps, *more.steps}}
        peaks = {b: max((p for p in (self.peaks.get(b), more.peaks.get(b)) if p is not None), default=None)
                 for b in steps}
        loads = [w for w in (self.load, more.load) if w is not None]
        unknown = self.load is None and bool(self) or more.load is None and bool(more)
        return TimedSteps(steps, peaks, None if unknown else LoadWindow.combined(loads), self.rounds + more.rounds)


def time_real_steps(trainer, batches: list[int], repeats: int = STEP_COST_REPEATS,
                    on_step: Callable[[int, float, float], None] | None = None, warmup: bool = True) -> TimedSteps:
    """A few real steps at each size, every one timed on the run's own data. The sizes take turns, so a burst of other
    work falls on both alike, and the load is measured. `warmup`: one untimed round; `on_step(micro-batch, tokens,
    seconds)` after each timed step."""
    import torch
    from torch.utils.data import DataLoader

    from tunelab.train.metrics import count_batch

    loaders = {b: iter(DataLoader(trainer.train_dataset, batch_size=b, shuffle=False,
                                  collate_fn=trainer.data_collator)) for b in batches}
    if not hasattr(trainer, "current_gradient_accumulation_steps"):
        # the trainer's loop ran no step in this process (a finished run's job started again resumes at its
        # end): it never set the accumulation window training_step divides the loss by; a timed step is its own
        trainer.current_gradient_accumulation_steps = 1
    out = TimedSteps({b: [] for b in batches})
    meter = None
    for i in range(0 if warmup else 1, repeats + 1):
        if i == 1:  # the first round is warm-up: the load is measured over the timed ones
            meter = LoadMeter.start()
        for b in batches:
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            _sync()
            t0 = time.perf_counter()
            try:
                inputs = trainer._prepare_inputs(next(loaders[b]))
            except StopIteration:
                continue
            n = count_batch(inputs)[0]
            trainer.training_step(trainer.model, inputs)
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
            _sync()
            if i:
                out.steps[b].append((time.perf_counter() - t0, n))
                if on_step is not None:
                    on_step(b, n, out.steps[b][-1][0])
                peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
                out.peaks[b] = max(out.peaks.get(b) or 0.0, peak) if peak is not None else None
    out.load = meter.window() if meter is not None else None
    return out


def measure_step_cost(trainer, micro_batch: int, steady_step_s: float | None,
                      tokens_per_step: float | None, repeats: int = STEP_COST_REPEATS) -> StepCost | None:
    """Per-token cost from real steps at two micro-batch sizes after the last save; the fixed part from steady time."""
    import torch

    rng_state = torch.get_rng_state()
    try:
        timed = time_real_steps(trainer, step_cost_sizes(micro_batch), repeats)
    finally:
        torch.set_rng_state(rng_state)
    points = [StepPoint(batch=b, tokens=t, seconds=round(sec, 6), peak_gib=peak)
              for b, (t, sec, peak) in sorted(timed.fastest().items())]
    if len(points) < 2 or points[1].tokens == points[0].tokens:
        return None
    (t1, s1), (t2, s2) = ((p.tokens, p.seconds) for p in points)
    per_token = max(0.0, (s2 - s1) / (t2 - t1))
    fixed = None
    if steady_step_s is not None and tokens_per_step is not None:
        fixed = max(0.0, steady_step_s - per_token * tokens_per_step)
    return StepCost(points=points, per_token_s=per_token, fixed_s=fixed, repeats=repeats, load=timed.load,
                    tokens_per_step=round(tokens_per_step, 2) if tokens_per_step is not None else None)
