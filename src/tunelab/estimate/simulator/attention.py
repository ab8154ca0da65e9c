"""Attention as a CUDA GPU runs it, for a step simulated on the CPU: on a CPU SDPA would pick CPU kernels or the math
path, storing the S×S matrices, which a GPU's fused kernels never do.

PyTorch's order on Ampere/Hopper (sdp_utils.cpp): FlashAttention-2 without a mask in fp16/bf16 with head dim <= 256,
else the memory-efficient kernel (a mask as an additive bias), else math. Each stand-in allocates what its kernel
allocates and saves what its autograd node saves, with the same output shapes: flash's output, log-sum-exp and the
backward's fp32 accumulators; the memory-efficient kernel's bias converted from a boolean mask (last dim padded to 16);
transformers' `flash_attention_2` (varlen on packed rows) with its contiguous copies. The RNG state is counted; cuDNN
attention is not modelled (ranked after both by default)."""

from __future__ import annotations

import torch

FLASH_MAX_HEAD_DIM = 256


def _round(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _rng_state(like: torch.Tensor) -> torch.Tensor:
    return torch.empty(2, dtype=torch.int64, device=like.device)


class _FlashStandIn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v):
        b, h, s, d = q.shape
        out = q.new_empty(b, s, h, d).transpose(1, 2)
        lse = torch.empty(b, h, s, dtype=torch.float32, device=q.device)
        ctx.rng = _rng_state(q)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        b, h, s, d = q.shape
        s128 = _round(s, 128)
        softmax_d = torch.empty(b, h, s128, dtype=torch.float32, device=q.device)
        dq_accum = torch.empty(b, s128, h, _round(d, 32), dtype=torch.float32, device=q.device)
        dq = q.new_empty(b, s, h, d).transpose(1, 2)
        kv_heads = k.shape[1]
        if kv_heads != h:  # grouped-query: gradients for every query head, then summed per kv head
            dk_all = k.new_empty(b, k.shape[2], h, d)
            dv_all = v.new_empty(b, v.shape[2], h, d)
            dk = dk_all.view(b, k.shape[2], kv_heads, h // kv_heads, d).sum(3).transpose(1, 2)
            dv = dv_all.view(b, v.shape[2], kv_heads, h // kv_heads, d).sum(3).transpose(1, 2)
            del dk_all, dv_all
        else:
            dk = k.new_empty(b, k.shape[2], kv_heads, d).transpose(1, 2)
            dv = v.new_empty(b, v.shape[2], kv_heads, d).transpose(1, 2)
        del softmax_d, dq_accum
        return dq, dk, dv


class _EfficientStandIn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias):
        b, h, s, d = q.shape
        out = q.new_empty(b, s, h, d).transpose(1, 2)
        lse = torch.empty(b, h, _round(s, 32), dtype=torch.float32, device=q.device)
        ctx.rng = _rng_state(q)
        ctx.save_for_backward(q, k, v, bias, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, bias, out, lse = ctx.saved_tensors
        b, h, s, d = q.shape
        delta = torch.empty(b, h, s, dtype=torch.float32, device=q.device)
        accum = torch.empty(b, h, s, d, dtype=torch.float32, device=q.device)
        dq = q.new_empty(b, s, h, d).transpose(1, 2)
        dk = k.new_empty(b, k.shape[2], k.shape[1], d).transpose(1, 2)
        dv = v.new_empty(b, v.shape[2], v.shape[1], d).transpose(1, 2)
        del delta, accum
        return dq, dk, dv, None


def _additive_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """What the memory-efficient path receives for a mask: a bias in the query dtype, last dim padded to 16."""
    bias = mask if mask.dtype == dtype else torch.empty(mask.shape, dtype=dtype, device=mask.device)
    last = mask.shape[-1]
    if last % 16:
        padded = torch.empty(*mask.shape[:-1], _round(last, 16), dtype=dtype, device=mask.device)
        bias = padded[..., :last]
    return bias


def gpu_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """Drop-in for torch.nn.functional.scaled_dot_product_attention with a CUDA GPU's kernel choice. Autocast
    lists SDPA as a lower-precision op: under it, q, k, v (and a float mask) are cast first, as on a GPU."""
    if torch.is_autocast_enabled("cpu"):
        low = torch.get_autocast_dtype("cpu")
        query, key, value = (t.to(low) for t in (query, key, value))
        if attn_mask is not None and attn_mask.is_floating_point():
            attn_mask = attn_mask.to(low)
    head_dim = query.shape[-1]
    half = query.dtype in (torch.float16, torch.bfloat16)
    if attn_mask is None and half and head_dim <= FLASH_MAX_HEAD_DIM:
        return _FlashStandIn.apply(query, key, value)
    if key.shape[1] != query.shape[1]:  # the efficient kernel takes no grouped-query heads: math
        return _MATH(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                     scale=scale, enable_gqa=enable_gqa)
    bias = _additive_bias(attn_mask, query.dtype) if attn_mask is not None else None
    return _EfficientStandIn.apply(query, key, value, bias)


def _math_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """PyTorch's math path: the S×S scores, softmax and their gradients are real tensors."""
    return torch.ops.aten._scaled_dot_product_attention_math(
        query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)[0]


_MATH = _math_sdpa


def flash_attention_2(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' `flash_attention_2` interface: B×H×S×D in, B×S×H×D out (the kernel saves contiguous copies)."""
    q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (query, key, value))
    return _FlashStandIn.apply(q, k, v).transpose(1, 2), None
