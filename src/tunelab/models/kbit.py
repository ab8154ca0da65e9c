"""How the frozen base of a QLoRA run is prepared for training: one place for the trainer (train/quantize.py)
and the memory simulator (estimate/simulator/build.py), so the step that is simulated is the step that runs.

peft's `prepare_model_for_kbit_training` freezes the base, enables input gradients for checkpointing, and
casts every fp16/bf16 parameter that is not 4-bit to fp32: the embeddings, the LM head and the norms. For a
Llama-3.1-8B (128k vocabulary, untied) the embeddings and head alone then hold 3.9 GiB instead of 2.0, and
the fp32 embedding puts the residual stream in fp32: bitsandbytes' Linear4bit returns its output in its
input's dtype, so q/k/v, the MLP and every checkpointed layer input are stored in fp32 too.

`frozen_dtype` chooses:
- `float32`: peft's casts, exactly.
- `compute`: the frozen parameters stay as loaded, in the compute dtype (fp32 ones, which transformers keeps
  in fp32 on purpose, stay fp32), as stacks that accelerate QLoRA do (axolotl casts norms, embeddings and head
  back to the compute dtype after peft's preparation; torchtune never upcasts them).
- `auto` (the default): `compute` when the compute dtype is bf16, else `float32`. With bf16 it is numerically
  safe: the weights were loaded in bf16 (an fp32 copy holds the same values, no precision is gained); under
  bf16 autocast the head's matmul runs in bf16 either way; every supported family's norm computes its
  statistics in fp32 internally; and the residual stream then runs in bf16, exactly as in tunelab's plain bf16
  LoRA runs; bf16 has fp32's exponent range. With fp16 (GPUs without bf16) the narrow range is what peft's
  upcast guards against (embeddings or residuals past 65504), so fp16 keeps peft's path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FROZEN_DTYPES: tuple[str, ...] = ("auto", "compute", "float32")


@dataclass(frozen=True)
class FrozenCast:
    """One frozen parameter the preparation casts: its name, dtype before and after."""

    name: str
    before: str
    after: str


def resolve_frozen_dtype(choice: str, compute_dtype: Any) -> str:
    """`compute` or `float32` for a run computing in `compute_dtype` (a torch.dtype or its name)."""
    if choice not in FROZEN_DTYPES:
        raise ValueError(f"frozen dtype {choice!r}: expected one of {', '.join(FROZEN_DTYPES)}")
    if choice != "auto":
        return choice
    return "compute" if str(compute_dtype).removeprefix("torch.") == "bfloat16" else "float32"


def frozen_casts(model: Any, frozen: str) -> list[FrozenCast]:
    """The casts the preparation makes: with `float32`, peft's rule (every fp16/bf16 parameter that is not a
    bitsandbytes Params4bit); with `compute`, none (parameters stay as loaded)."""
    import torch

    if resolve_frozen_dtype(frozen, None) != "float32":
        return []
    half = (torch.float16, torch.bfloat16)
    return [FrozenCast(name, str(p.dtype).removeprefix("torch."), "float32")
            for name, p in model.named_parameters()
            if p.dtype in half and type(p).__name__ != "Params4bit"]


def prepare_kbit(model: Any, frozen: str, checkpointing: bool) -> Any:
    """peft's k-bit preparation with the frozen dtype resolved (`compute` or `float32`): freeze the base, make
    the casts, and with checkpointing make the embeddings' output require grad and enable checkpointing (as
    peft does; the trainer re-enables it with its own arguments)."""
    import torch

    frozen = resolve_frozen_dtype(frozen, model.get_input_embeddings().weight.dtype)
    casts = {c.name for c in frozen_casts(model, frozen)}
    for name, p in model.named_parameters():
        p.requires_grad = False
        if name in casts:
            p.data = p.data.to(torch.float32)
    if checkpointing:
        model.enable_input_require_grads()
        model.activation_checkpointing_enable()  # transformers 5's name (gradient_… is a deprecated alias)
    return model
