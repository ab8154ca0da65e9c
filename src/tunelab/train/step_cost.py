"""Measure how a step's time (and peak memory) grows with tokens, once training is over.

Small models and short sequences do not scale with parameter count: a step costs a fixed part
(kernel launches, optimizer, Python) plus a part per token. One run's steady throughput gives
their sum at one point; timing forward+backward at two more micro-batch sizes (after the last
checkpoint is saved, gradients thrown away) separates them, so a single calibration run can
predict other batch sizes and other model sizes.
"""

from __future__ import annotations

import time
from statistics import median
from typing import Any

REPEATS = 3


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _time_fwd_bwd(model, batch: int, length: int, vocab: int, device) -> tuple[float, float | None]:
    import torch

    ids = torch.randint(0, vocab, (batch, length), device=device, generator=None)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(REPEATS + 1):
        _sync()
        t0 = time.perf_counter()
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        _sync()
        if i:  # the first is warm-up
            times.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return median(times), peak


def measure_step_cost(model, micro_batch: int, seq_len: int, vocab: int, steady_step_s: float | None,
                      tokens_per_step: float | None) -> dict[str, Any]:
    """Per-token cost from fwd+bwd at two micro-batch sizes; the fixed part from the real steady step."""
    import torch

    device = next(model.parameters()).device
    rng_state = torch.get_rng_state()
    was_training = model.training
    model.train()
    sizes = sorted({max(1, micro_batch // 2), micro_batch * 2})
    if len(sizes) < 2:
        sizes = [1, 2]
    points = []
    try:
        for b in sizes:
            secs, peak = _time_fwd_bwd(model, b, seq_len, vocab, device)
            points.append({"tokens": b * seq_len, "seconds": round(secs, 6), "peak_gib": peak})
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        torch.set_rng_state(rng_state)
    (t1, s1), (t2, s2) = ((p["tokens"], p["seconds"]) for p in points)
    per_token = max(0.0, (s2 - s1) / (t2 - t1))
    fixed = None
    if steady_step_s is not None and tokens_per_step is not None:
        fixed = max(0.0, steady_step_s - per_token * tokens_per_step)
    return {"points": points, "per_token_s": per_token, "fixed_s": fixed, "seq_len": seq_len}
