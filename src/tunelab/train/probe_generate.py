"""The probe's generation timing: batched generations of the run's model loaded as evaluation loads it (with an
untrained LoRA of the run's shape), so forecast/evaltime.py prices an evaluation at a measured speed. Each batch size is
timed generating one token (prefill) and GENERATE_TOKENS with early stopping off; the difference is the decode steps,
split into a fixed and a per-row part (rundir.probe.GenerationSpeed.fit)."""

from __future__ import annotations

import time
from typing import Any

from tunelab.host.device import resolve_dtype
from tunelab.rundir.config import RunConfig
from tunelab.rundir.probe import EVAL_PROBE_BATCH, GenerationPoint, GenerationSpeed

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
    model.to(device)
    model.eval()
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
