"""Measure how a step's time (and peak memory) grows with tokens, once training is over.

Small models and short sequences do not scale with parameter count: a step costs a fixed part
(kernel launches, optimizer, Python) plus a part per token. One run's steady throughput gives
their sum at one point; timing forward+backward at two more micro-batch sizes (after the last
checkpoint is saved, gradients thrown away) separates them, so a single calibration run can
predict other batch sizes and other model sizes.
"""

from __future__ import annotations

import time
from typing import Any

REPEATS = 4


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _time_real_steps(trainer, batch: int) -> tuple[float, float, float | None] | None:
    """(tokens, seconds, peak GiB) of the fastest of a few real steps at this micro-batch: collation,
    forward, backward and optimizer step, on the run's own training data. The fastest, not the median:
    other work on the machine only ever adds time, so the minimum is the least disturbed measurement."""
    import torch
    from torch.utils.data import DataLoader

    from tunelab.train.metrics import count_batch

    loader = DataLoader(trainer.train_dataset, batch_size=batch, shuffle=False, collate_fn=trainer.data_collator)
    it = iter(loader)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    times, tokens = [], []
    for i in range(REPEATS + 1):
        _sync()
        t0 = time.perf_counter()
        try:
            inputs = trainer._prepare_inputs(next(it))
        except StopIteration:
            break
        n = count_batch(inputs)[0]
        trainer.training_step(trainer.model, inputs)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        _sync()
        if i:  # the first is warm-up
            times.append(time.perf_counter() - t0)
            tokens.append(n)
    if not times:
        return None
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    fastest = min(range(len(times)), key=times.__getitem__)
    return tokens[fastest], times[fastest], peak


def measure_step_cost(trainer, micro_batch: int, steady_step_s: float | None,
                      tokens_per_step: float | None) -> dict[str, Any] | None:
    """Per-token cost from real steps at two micro-batch sizes (after the last checkpoint is saved:
    the weights they change are never saved); the fixed part from the run's own steady step time."""
    import torch

    rng_state = torch.get_rng_state()
    points = []
    try:
        for b in sorted({max(1, micro_batch // 2), micro_batch * 2}):
            got = _time_real_steps(trainer, b)
            if got:
                points.append({"batch": b, "tokens": got[0], "seconds": round(got[1], 6), "peak_gib": got[2]})
    finally:
        torch.set_rng_state(rng_state)
    if len(points) < 2 or points[1]["tokens"] == points[0]["tokens"]:
        return None
    (t1, s1), (t2, s2) = ((p["tokens"], p["seconds"]) for p in points)
    per_token = max(0.0, (s2 - s1) / (t2 - t1))
    fixed = None
    if steady_step_s is not None and tokens_per_step is not None:
        fixed = max(0.0, steady_step_s - per_token * tokens_per_step)
    return {"points": points, "per_token_s": per_token, "fixed_s": fixed}
