"""How the frozen base of a QLoRA run is prepared: one place for the trainer and the memory simulator, so the step
simulated is the step that runs.

peft's `prepare_model_for_kbit_training` casts every 16-bit parameter that is not 4-bit to fp32 (embeddings, head,
norms): on a large vocabulary that doubles their memory, and the fp32 embedding puts the whole residual stream in fp32.
`frozen_dtype`: `float32` is peft's casts; `compute` keeps the frozen parameters as loaded, as axolotl and torchtune do;
`auto` is `compute` under bf16 (numerically safe: the values were loaded in bf16, and bf16 has fp32's range) and
`float32` under fp16, whose narrow range is what peft's upcast guards against."""

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
    """peft's k-bit preparation with the frozen dtype resolved: freeze the base, make the casts, and with checkpointing
    make the embeddings' output require grad (as peft does)."""
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
