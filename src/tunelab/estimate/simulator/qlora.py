"""A stand-in for bitsandbytes' 4-bit Linear (QLoRA), which has no CPU or fake-tensor kernel.

It stores what `bnb.nn.Linear4bit` stores under tunelab's BitsAndBytesConfig (NF4, double quantization): the packed
weight (two values a byte) and the quantization state (absmax per 64 weights quantized to uint8, fp32 absmax per 256
blocks, two code tables). Its forward allocates what `MatMul4Bit` does: the input cast to the compute dtype, the weight
dequantized for one `linear` and freed, the output cast back to the input's dtype; nothing of the input is saved, and
backward dequantizes again."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel

BLOCK = 64
NESTED_BLOCK = 256


class _MatMul4BitStandIn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, layer):
        ctx.layer = layer  # the packed weight and its quantization state only, as MatMul4Bit keeps them
        weight = layer.dequantized(x.dtype)
        return torch.nn.functional.linear(x, weight)

    @staticmethod
    def backward(ctx, grad_out):
        weight = ctx.layer.dequantized(grad_out.dtype)
        return grad_out @ weight, None


class NF4Linear(torch.nn.Linear):
    """nn.Linear's interface (PEFT wraps it as it wraps any Linear) with Linear4bit's storage and matmul."""

    absmax: torch.Tensor  # buffers, registered in __init__
    nested_absmax: torch.Tensor
    code: torch.Tensor
    nested_code: torch.Tensor

    def __init__(self, in_features: int, out_features: int, compute_dtype: torch.dtype, device=None):
        torch.nn.Module.__init__(self)
        self.in_features, self.out_features, self.compute_dtype = in_features, out_features, compute_dtype
        n = in_features * out_features
        blocks = -(-n // BLOCK)
        self.weight = torch.nn.Parameter(torch.empty((n + 1) // 2, 1, dtype=torch.uint8, device=device),
                                         requires_grad=False)
        self.register_parameter("bias", None)  # what nn.Linear(bias=False) does
        self.register_buffer("absmax", torch.empty(blocks, dtype=torch.uint8, device=device))
        self.register_buffer("nested_absmax", torch.empty(-(-blocks // NESTED_BLOCK), dtype=torch.float32,
                                                          device=device))
        self.register_buffer("code", torch.empty(256, dtype=torch.float32, device=device))
        self.register_buffer("nested_code", torch.empty(256, dtype=torch.float32, device=device))

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        absmax = torch.empty(self.absmax.shape, dtype=torch.float32, device=self.weight.device)
        weight = torch.empty(self.out_features, self.in_features, dtype=dtype, device=self.weight.device)
        del absmax
        return weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _MatMul4BitStandIn.apply(x.to(self.compute_dtype), self).to(x.dtype)


def quantize_linears(model: PreTrainedModel, compute_dtype: torch.dtype) -> None:
    """Replace every Linear but the output head with NF4Linear, as transformers' bnb loading does."""
    head = model.get_output_embeddings()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear and child is not head:
                setattr(parent, name, NF4Linear(child.in_features, child.out_features, compute_dtype, device="meta"))
    setattr(model, "is_loaded_in_4bit", True)  # noqa: B010 (a flag transformers and PEFT read with getattr, not declared)
