"""Measure how a step's time (and peak memory) grows with tokens, once training is over.

Small models and short sequences do not scale with parameter count: a step costs a fixed part
(kernel launches, optimizer, Python) plus a part per token. One run's steady throughput gives
their sum at one point; timing forward+backward at two more micro-batch sizes (after the last
checkpoint is saved, gradients thrown away) separates them, so a single calibration run can
predict other batch sizes and other model sizes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tunelab.rundir.summary import StepCost, StepPoint

REPEATS = 4
STEPS_PER_REPEAT = 20  # after training: one timed repeat per this many steps the run took, up to REPEATS


def repeats_after(steps: int) -> int:
    """Timed repeats worth their cost after a run of `steps` steps. A repeat is a step at half and one at twice
    the micro-batch (~2.5 of the run's steps), so one per 20 steps keeps the measurement within ~1/5 of the
    training it follows: a long GPU run gets all REPEATS, a short one fewer, and one of under 20 steps none (its
    steady step time, which the split divides, is too rough to split)."""
    return min(REPEATS, steps // STEPS_PER_REPEAT)


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_real_steps(trainer, batches: list[int], repeats: int = REPEATS,
                    on_step: Callable[[int, float, float], None] | None = None,
                    ) -> dict[int, tuple[float, float, float | None]]:
    """{micro-batch: (tokens, seconds, peak GiB)} of the fastest of a few real steps at each size: collation,
    forward, backward and optimizer step, on the run's own training data. The sizes take turns step by step,
    so a burst of other work on the machine falls on both alike; and the fastest counts, not the median:
    other work only ever adds time, so the minimum is the least disturbed measurement. `on_step(micro-batch,
    tokens, seconds)` is called after each timed step (the GPU kit's per-step trace; peaks are still those
    of that step)."""
    import torch
    from torch.utils.data import DataLoader

    from tunelab.train.metrics import count_batch

    loaders = {b: iter(DataLoader(trainer.train_dataset, batch_size=b, shuffle=False,
                                  collate_fn=trainer.data_collator)) for b in batches}
    if not hasattr(trainer, "current_gradient_accumulation_steps"):
        # the trainer's loop ran no step in this process (a finished run's job started again resumes at its
        # end): it never set the accumulation window training_step divides the loss by; a timed step is its own
        trainer.current_gradient_accumulation_steps = 1
    timed: dict[int, list[tuple[float, float]]] = {b: [] for b in batches}
    peaks: dict[int, float | None] = {}
    for i in range(repeats + 1):
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
            if i:  # the first round is warm-up
                timed[b].append((time.perf_counter() - t0, n))
                if on_step is not None:
                    on_step(b, n, timed[b][-1][0])
                peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
                peaks[b] = max(peaks.get(b) or 0.0, peak) if peak is not None else None
    out = {}
    for b, rows in timed.items():
        if rows:
            seconds, tokens = min(rows)
            out[b] = (tokens, seconds, peaks.get(b))
    return out


def measure_step_cost(trainer, micro_batch: int, steady_step_s: float | None,
                      tokens_per_step: float | None, repeats: int = REPEATS) -> StepCost | None:
    """Per-token cost from real steps at two micro-batch sizes (after the last checkpoint is saved:
    the weights they change are never saved); the fixed part from the run's own steady step time."""
    import torch

    rng_state = torch.get_rng_state()
    try:
        measured = time_real_steps(trainer, sorted({max(1, micro_batch // 2), micro_batch * 2}), repeats)
    finally:
        torch.set_rng_state(rng_state)
    points = [StepPoint(batch=b, tokens=t, seconds=round(sec, 6), peak_gib=peak)
              for b, (t, sec, peak) in sorted(measured.items())]
    if len(points) < 2 or points[1].tokens == points[0].tokens:
        return None
    (t1, s1), (t2, s2) = ((p.tokens, p.seconds) for p in points)
    per_token = max(0.0, (s2 - s1) / (t2 - t1))
    fixed = None
    if steady_step_s is not None and tokens_per_step is not None:
        fixed = max(0.0, steady_step_s - per_token * tokens_per_step)
    return StepCost(points=points, per_token_s=per_token, fixed_s=fixed, repeats=repeats,
                    tokens_per_step=round(tokens_per_step, 2) if tokens_per_step is not None else None)
