"""Device and dtype rules shared by training, evaluation and the plan (one rule, so all load weights alike).
Kept outside the job's package: evaluation and the planner use it without importing the trainer."""

from __future__ import annotations

from typing import Any

# bf16 tensor cores arrived with Ampere (compute capability 8.0). Before it (V100 7.0, T4 7.5) torch still
# reports bf16 as "supported", but emulated on the CUDA cores: several times slower than fp16 tensor cores.
BF16_MIN_CAPABILITY = (8, 0)


def resolve_device(device: str | None) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def auto_dtype_name(capability: tuple[int, int] | None) -> str:
    """What `dtype: auto` trains in on a GPU of this compute capability (None: no GPU): bf16 where tensor cores run it;
    before Ampere fp32, since fp16 weights make modules_to_save's fp16 copies trainable, which fp16 loss scaling
    refuses."""
    return "bfloat16" if capability is not None and tuple(capability) >= BF16_MIN_CAPABILITY else "float32"


def resolve_dtype(name: str, device: str) -> Any:
    """'auto' = auto_dtype_name of the device's GPU; any other name is a torch dtype."""
    import torch

    if name != "auto":
        return getattr(torch, name)
    on_gpu = device.startswith("cuda") and torch.cuda.is_available()
    index = torch.device(device).index if on_gpu else None
    capability = torch.cuda.get_device_capability(index) if on_gpu else None
    return getattr(torch, auto_dtype_name(capability))


def on_cpu(device: str) -> bool:
    """Whether a device string names the CPU: evaluation's paths measured there only (the length cut's step cost,
    merging, the shared prefix) ask this one rule."""
    return str(device).startswith("cpu")


def merges_adapters(device: str) -> bool:
    """Whether evaluation answers an adapter with it merged into the base (evaluate/merging.py), and the probe times
    generation so: on a CPU, where PEFT's unmerged update beside every layer measured 1.27× slower; a GPU unmeasured."""
    return on_cpu(device)
