"""Device and dtype rules shared by training and evaluation (one rule, so both load weights alike)."""

from __future__ import annotations

from typing import Any


def resolve_device(device: str | None) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(name: str, device: str) -> Any:
    """'auto' = bf16 on a bf16-capable GPU, else fp32; any other name is a torch dtype."""
    import torch

    if name != "auto":
        return getattr(torch, name)
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32
