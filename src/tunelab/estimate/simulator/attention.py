"""Attention as a CUDA GPU runs it, for a step simulated on the CPU.

On a CPU, `scaled_dot_product_attention` picks CPU kernels (or the math path that stores the S×S
matrices); on an Ampere/Hopper GPU PyTorch picks, in this order (aten/src/ATen/native/transformers/
sdp_utils.cpp): FlashAttention-2 when there is no mask and the dtype is fp16/bf16 with a head dim
<= 256; else the memory-efficient (CUTLASS) kernel, which takes a mask as an additive bias; else math.
Neither fused kernel stores the attention matrix. The stand-ins below allocate what each kernel
allocates and keep what its autograd node saves, with the same output shapes:

- flash forward: the output (allocated as B×S×H×D and returned transposed) and the log-sum-exp
  (B×H×S fp32); saves q, k, v, output, log-sum-exp. Backward: dq, dk, dv (with grouped-query heads, dk
  and dv first for all H heads, then summed), `softmax_d` (B×H×S₁₂₈ fp32) and the fp32 `dq_accum`
  (B×S₁₂₈×H×D) that FlashAttention-2's backward always uses.
- memory-efficient forward: a boolean mask is first converted to an additive bias in the query's dtype
  (`convert_boolean_attn_mask`, a new tensor of the mask's shape), its last dim padded to a multiple of 16;
  output and log-sum-exp (B×H×S₃₂ fp32); saves q, k, v, the bias, output, log-sum-exp. Backward: dq, dk,
  dv, `delta` (B×H×S fp32) and an fp32 dq accumulator (B×H×S×D).
- FlashAttention-2 through transformers' `flash_attention_2` (varlen on packed rows): q, k, v are made
  contiguous in B×S×H×D (copies, saved by the kernel), no mask is built; otherwise as flash.
The random-number state (two int64 scalars) is counted. cuDNN attention is not modelled (PyTorch ranks
it after flash and memory-efficient by default).
"""

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
    """transformers' `flash_attention_2` interface: inputs B×H×S×D, output B×S×H×D (contiguous copies of
    q, k, v in B×S×H×D, as the varlen path makes them, are what the kernel saves)."""
    q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (query, key, value))
    return _FlashStandIn.apply(q, k, v).transpose(1, 2), None
