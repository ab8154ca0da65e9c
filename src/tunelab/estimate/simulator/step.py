"""Run tunelab's training step on fake tensors and count its memory: two optimizer steps (the optimizer's state exists
from the first), as the HF Trainer under TRL's SFTTrainer runs them on a GPU — TRL's collator's inputs with labels
everywhere (the worst case), autocast in the run's dtype, the fused LM head's loss and metrics, backward, clipping,
fused AdamW, `zero_grad(set_to_none=True)`.

GPU-only kernels get stand-ins (attention.py, qlora.py, and TRL's in-place Triton tile folds, whose torch fallback would
allocate temporaries a GPU never sees)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from tunelab.estimate.simulator.attention import gpu_sdpa
from tunelab.estimate.simulator.images import image_inputs
from tunelab.estimate.simulator.replay import FirstStep
from tunelab.estimate.simulator.spec import StepConfig, StepShape
from tunelab.estimate.simulator.tracker import StorageTracker

DDP_BUCKET_BYTES = 25 * 2**20  # torch DDP's bucket_cap_mb default
STEPS = 2


@contextlib.contextmanager
def gpu_kernels() -> Iterator[None]:
    """Swap in the GPU kernels' stand-ins for the duration of a simulation."""
    import transformers.masking_utils as masking
    import trl.kernels.chunked_logprob as chunked

    saved_sdpa, saved_tracing = torch.nn.functional.scaled_dot_product_attention, masking.is_tracing
    # transformers treats fake tensors as a compile trace and then always builds the mask; eager training on a
    # GPU reads the mask instead (the tracker answers those reads: see tracker.py)
    masking.is_tracing = lambda tensor=None: saved_tracing()
    saved = {name: getattr(chunked, name) for name in ("_forward_tile", "_backward_tile", "_addmm_fp32")}
    torch.nn.functional.scaled_dot_product_attention = gpu_sdpa
    chunked._forward_tile = chunked._backward_tile = _in_place_kernel
    chunked._addmm_fp32 = _in_place_kernel
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention, masking.is_tracing = saved_sdpa, saved_tracing
        for name, fn in saved.items():
            setattr(chunked, name, fn)


def _in_place_kernel(*args: Any, **kwargs: Any) -> None:
    """A Triton fold or an fp32-output cuBLAS matmul: writes into buffers it is given, allocates nothing."""


def make_inputs(shape: StepShape) -> dict[str, Any]:
    """The collator's output for one micro-batch (token values do not matter, shapes do)."""
    if shape.packed:  # TRL's padding-free collator: one row, position ids, and the boundaries for varlen kernels
        ids = torch.zeros(1, shape.tokens, dtype=torch.long)
        return {"input_ids": ids, "labels": torch.zeros_like(ids), "position_ids": torch.zeros_like(ids),
                "cu_seq_lens_q": shape.cu_seqlens(), "max_length_q": shape.seq_len}
    ids = torch.zeros(shape.micro_batch, shape.seq_len, dtype=torch.long)
    return {"input_ids": ids, "labels": torch.zeros_like(ids), "attention_mask": torch.ones_like(ids)}


def _micro_step(model: torch.nn.Module, shape: StepShape, c: StepConfig, tracker: StorageTracker, step: int) -> None:
    if shape.images_per_row:
        inputs = image_inputs(shape, model.config, tracker.values)
    else:
        inputs = make_inputs(shape)
        for t in inputs.values():  # the real boundaries tensor too: the Trainer moves it to the GPU
            if isinstance(t, torch.Tensor):
                tracker.track(t)
    autocast = (torch.autocast("cpu", dtype=getattr(torch, c.dtype))
                if c.autocast and c.dtype in ("bfloat16", "float16") else contextlib.nullcontext())
    tracker.set_phase(f"step {step}: forward")
    with autocast:
        if c.loss == "trl_fused":
            out = model(**inputs, fused_lm_head=True, use_cache=False)
            n = out.label_mask.sum().clamp(min=1)
            loss = -out.log_probs.sum() / n / c.gradient_accumulation_steps
            metrics = (out.entropy.detach().sum(), out.is_top1.sum())
        else:  # transformers' loss inside the model: full logits, upcast to fp32 for cross-entropy
            out = model(**inputs, use_cache=False)
            loss, metrics = out.loss / c.gradient_accumulation_steps, None
    tracker.set_phase(f"step {step}: backward")
    loss.backward()
    del out, loss, metrics, inputs


def run_steps(model: torch.nn.Module, c: StepConfig, shape: StepShape, tracker: StorageTracker,
              ddp: bool = False, replay: bool = True) -> dict[str, int]:
    """Two optimizer steps; the live bytes at the breakdown's points. replay: the second step's allocations replayed."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    marks = {"model": tracker.allocated}
    buckets = _ddp_buckets(trainable) if ddp else []
    marks["ddp_buckets"] = tracker.allocated - marks["model"]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=c.weight_decay, fused=True)
    model.train()
    first: FirstStep | None = None
    for step in range(1, STEPS + 1):
        if step == STEPS:
            marks["before_last_step"] = tracker.allocated
        if first is not None:
            first.replay_as(step)
        else:
            record = replay and step == 1  # the last step replays the first's recording
            with tracker.recording() if record else contextlib.nullcontext() as rec:
                for _ in range(min(c.gradient_accumulation_steps, 2)):  # a second micro-batch meets the first's grads
                    _micro_step(model, shape, c, tracker, step)
            first = FirstStep.of(rec, tracker, trainable) if rec is not None else None
        tracker.set_phase(f"step {step}: optimizer")
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    marks["after"] = tracker.allocated
    del buckets
    return marks


def _ddp_buckets(trainable: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    """DDP's gradient buckets (accelerate's default): flat copies of the trainable gradients, 25 MiB each, held."""
    buckets, size, dtype = [], 0, None
    for p in trainable:
        nbytes = p.numel() * p.element_size()
        if size and (size + nbytes > DDP_BUCKET_BYTES or p.dtype != dtype):
            buckets.append(torch.empty(size, dtype=torch.uint8))
            size = 0
        size, dtype = size + nbytes, p.dtype
    if size:
        buckets.append(torch.empty(size, dtype=torch.uint8))
    return buckets
