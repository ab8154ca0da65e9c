"""Per-sequence attention over packed rows: what `attention: varlen` (and `auto` with packing) trains with.

TRL's padding-free collator flattens a packed micro-batch into one row with restarting `position_ids`; SDPA would need a
dense (ΣT)² mask. Here each example attends on its own: on a CUDA GPU through PyTorch's `varlen_attn`
(models/varlen.py), elsewhere or where that kernel cannot serve the layer by SDPA on each example's slice.
Boundaries come from `cu_seq_lens_q`, else from `position_ids`, so an all-ones mask cannot join examples."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class VarlenCall:
    """What the installed `varlen_attn` accepts, and the call made to fit it."""

    fn: Callable[..., Any]
    takes_scale: bool
    takes_window: bool
    takes_gqa: bool
    causal_flag: bool  # 2.10: `is_causal`; later releases: the window (-1, 0)

    @classmethod
    def of(cls, fn: Callable[..., Any]) -> VarlenCall | str:
        """The call for `fn`, or why tunelab cannot call it (a signature it does not know how to make causal)."""
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError) as exc:
            return f"varlen_attn's signature cannot be read ({exc})"
        window, causal = "window_size" in params, "is_causal" in params
        if not (window or causal):
            return f"varlen_attn{inspect.signature(fn)} takes neither window_size nor is_causal"
        return cls(fn, "scale" in params, window, "enable_gqa" in params, causal and not window)

    def adaptations(self, q_heads: int, kv_heads: int, scale: float | None, head_dim: int) -> str | None:
        """What this release makes tunelab do differently for a layer (None: nothing), for summary.json."""
        done = []
        if kv_heads != q_heads and not self.takes_gqa:
            done.append(f"key/value heads repeated {q_heads // kv_heads}x: no enable_gqa")
        if scale is not None and not self.takes_scale and scale != head_dim**-0.5:
            done.append("scale folded into the query: no scale argument")
        return f"{'; '.join(done)} in PyTorch {torch.__version__}" if done else None

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_len: int,
                 scale: float | None, window: int | None) -> torch.Tensor:
        """Causal attention of packed examples: q (T, H, D), k and v (T, Hkv, D) → (T, H, D). `window`: the keys
        each query sees, itself included (None: every earlier key of its example)."""
        kwargs: dict[str, Any] = {}
        if k.shape[1] != q.shape[1]:
            if self.takes_gqa:
                kwargs["enable_gqa"] = True
            else:  # query head h reads key/value head h // groups, as transformers' repeat_kv lays them out
                groups = q.shape[1] // k.shape[1]
                k, v = (t.repeat_interleave(groups, dim=1) for t in (k, v))
        if scale is not None:
            if self.takes_scale:
                kwargs["scale"] = scale
            elif scale != q.shape[-1] ** -0.5:
                q = q * (scale * q.shape[-1] ** 0.5)
        if self.causal_flag:
            if window is not None:
                raise ValueError("this varlen_attn takes no window: the layer belongs to per-sequence SDPA")
            kwargs["is_causal"] = True
        else:
            kwargs["window_size"] = (window - 1 if window else -1, 0)
        out = self.fn(q, k, v, cu_seqlens, cu_seqlens, max_len, max_len, **kwargs)
        assert isinstance(out, torch.Tensor)
        return out


@functools.cache
def installed_varlen() -> VarlenCall | str:
    """The installed release's call, read once per process; a string says why there is none."""
    try:
        from torch.nn.attention.varlen import varlen_attn  # PyTorch >= 2.10
    except ImportError:
        return f"PyTorch {torch.__version__} has no torch.nn.attention.varlen"
    return VarlenCall.of(varlen_attn)


log = logging.getLogger("tunelab")

VARLEN_MAX_HEAD_DIM = 256
# The kernel a layer really ran, once per process and path: the job writes it into summary.json and train.log.
KERNELS_USED: dict[str, str] = {}
_DEVICE_OVERRIDE: contextvars.ContextVar[str | None] = contextvars.ContextVar("tunelab_varlen_device", default=None)


@contextlib.contextmanager
def as_if_on(device_type: str) -> Iterator[None]:
    """Choose the path as if tensors were on `device_type`: the memory simulator runs the CUDA path on fake CPU
    tensors (varlen_attn's fake implementation and autograd saves), exactly as a GPU job would."""
    token = _DEVICE_OVERRIDE.set(device_type)
    try:
        yield
    finally:
        _DEVICE_OVERRIDE.reset(token)


@dataclass(frozen=True)
class Segments:
    """Example boundaries of a flattened (rows × tokens) batch: cumulative starts and the longest example."""

    cu_seqlens: torch.Tensor  # int32, (N + 1,)
    max_len: int

    def spans(self) -> list[tuple[int, int]]:
        cu = self.cu_seqlens.tolist()
        return [(a, b) for a, b in zip(cu[:-1], cu[1:]) if b > a]


def segments_of(position_ids: torch.Tensor | None, rows: int, length: int, kwargs: dict[str, Any]) -> Segments:
    """Example boundaries: the collator's cu_seq_lens for a single packed row, else derived from position_ids
    (a position that does not follow its predecessor starts an example; every row starts one)."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is not None and rows == 1 and kwargs.get("max_length_q") is not None:
        return Segments(cu.to(torch.int32), int(kwargs["max_length_q"]))
    if position_ids is None:
        starts = torch.arange(0, rows * length, length)
    else:
        pos = position_ids.expand(rows, length).reshape(-1).cpu()
        new = torch.ones_like(pos, dtype=torch.bool)
        new[1:] = pos[1:] != pos[:-1] + 1
        new[::length] = True
        starts = new.nonzero().flatten()
    cu = torch.cat([starts, torch.tensor([rows * length])]).to(torch.int32)
    return Segments(cu, int(cu.diff().max()))


def _kernel_serves(query: torch.Tensor, softcap: float | None, window: int | None) -> VarlenCall | str:
    """The installed varlen_attn's call where it can run this layer, else why it cannot."""
    device = _DEVICE_OVERRIDE.get() or query.device.type
    if device != "cuda":
        return "not on a CUDA GPU"
    call = installed_varlen()
    if isinstance(call, str):
        return call
    if query.dtype not in (torch.float16, torch.bfloat16):
        return f"{str(query.dtype).removeprefix('torch.')} (the kernel takes float16/bfloat16)"
    if query.shape[-1] > VARLEN_MAX_HEAD_DIM or query.shape[-1] % 8:
        return f"head dim {query.shape[-1]} (the kernel takes multiples of 8 up to {VARLEN_MAX_HEAD_DIM})"
    if softcap:
        return f"attention logit soft-capping ({softcap:g})"
    if window and not call.takes_window:
        return f"a sliding window ({window}): PyTorch {torch.__version__}'s varlen_attn takes none"
    return call


def kernels_used() -> str | None:
    """The paths this process's varlen layers took, for summary.json (None: the function never ran)."""
    return "; ".join(f"{p} ({why})" if why else p for p, why in KERNELS_USED.items()) or None


def _note_kernel(path: str, reason: str | None, on_cuda: bool = False) -> None:
    """Record the path once; a GPU layer that could not use varlen_attn says why, once, in the log, and one that
    used it as the installed release needed (models/varlen.py) says what it did."""
    if path not in KERNELS_USED:
        KERNELS_USED[path] = reason or ""
        if reason and on_cuda:
            log.warning("attention: per-sequence SDPA instead of varlen_attn (%s); examples stay isolated", reason)
        elif reason:
            log.info("attention: varlen_attn with %s", reason)


def varlen_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                     sliding_window: int | None = None, softcap: float | None = None,
                     position_ids: torch.Tensor | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention interface: query (B, H, S, D), key/value (B, Hkv, S, D) → (B, S, H, D), None."""
    rows, heads, length, dim = query.shape
    device = query.device.type
    if torch.is_autocast_enabled(device) and query.dtype == torch.float32:  # as autocast casts SDPA's inputs
        low = torch.get_autocast_dtype(device)
        query, key, value = query.to(low), key.to(low), value.to(low)
    if attention_mask is not None or key.shape[2] != length:  # padded rows, or decoding against a cache
        _note_kernel("masked", None)
        return _masked(module, query, key, value, attention_mask, scaling, dropout, softcap, kwargs), None
    segs = segments_of(position_ids, rows, length, kwargs)
    window = sliding_window if sliding_window and sliding_window < segs.max_len else None
    served = _kernel_serves(query, softcap, window)
    if not isinstance(served, str):
        _note_kernel("varlen_attn", served.adaptations(heads, key.shape[1], scaling, dim))
        cu = segs.cu_seqlens.to(query.device, non_blocking=True)
        out = served(_flat(query), _flat(key), _flat(value), cu, segs.max_len, scaling, window)
    else:
        _note_kernel("per-sequence sdpa", served, on_cuda=(_DEVICE_OVERRIDE.get() or query.device.type) == "cuda")
        out = _per_sequence(query, key, value, segs, scaling, dropout, window, softcap)
    return out.view(rows, length, heads, dim), None


def _flat(t: torch.Tensor) -> torch.Tensor:
    """(B, H, S, D) → (B·S, H, D)."""
    return t.transpose(1, 2).reshape(-1, t.shape[1], t.shape[3])


def _per_sequence(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, segs: Segments,
                  scaling: float | None, dropout: float, window: int | None, softcap: float | None) -> torch.Tensor:
    """Each example's slice attended alone: (B·S, H, D) out, memory per example."""
    q, k, v = (_flat(t).transpose(0, 1) for t in (query, key, value))  # (H, B·S, D)
    parts = []
    for a, b in segs.spans():
        n = b - a
        mask = _band(n, window, query.device) if window and n > window else None
        # (1, H, T, D): the 4-D layout every SDPA path takes
        parts.append(_attend(q[None, :, a:b], k[None, :, a:b], v[None, :, a:b], mask, scaling, dropout, softcap,
                             causal=mask is None)[0])
    return torch.cat(parts, dim=1).transpose(0, 1)


def _band(n: int, window: int, device: torch.device) -> torch.Tensor:
    """Causal sliding-window mask of one example: key j visible to query i when i - window < j <= i."""
    i = torch.arange(n, device=device)
    return (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - window)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scaling: float | None,
            dropout: float, softcap: float | None, causal: bool) -> torch.Tensor:
    """SDPA on (…, H, T, D) slices; soft-capped scores by explicit math (SDPA has no soft-cap)."""
    gqa = k.shape[-3] != q.shape[-3]
    if softcap:
        if gqa:
            k, v = (t.repeat_interleave(q.shape[-3] // t.shape[-3], dim=-3) for t in (k, v))
        scale = scaling if scaling is not None else q.shape[-1] ** -0.5
        scores = torch.tanh((q @ k.transpose(-1, -2)) * scale / softcap) * softcap
        n = q.shape[-2]
        keep = mask if mask is not None else torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        return torch.nn.functional.dropout(probs, p=dropout, training=dropout > 0) @ v
    return torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal, scale=scaling, enable_gqa=gqa)


def _masked(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
            mask: torch.Tensor | None, scaling: float | None, dropout: float, softcap: float | None,
            kwargs: dict[str, Any]) -> torch.Tensor:
    """Padded rows (sdpa_mask's boolean mask) or a cached decode: what `sdpa` does there, (B, S, H, D); a
    soft-capped model gets the explicit math with the mask."""
    if not softcap:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, mask, dropout=dropout, scaling=scaling, **kwargs)[0]
    keep = mask[:, :, :, : key.shape[-2]] if mask is not None else torch.ones(
        query.shape[-2], key.shape[-2], dtype=torch.bool, device=query.device)
    return _attend(query, key, value, keep, scaling, dropout, softcap, causal=False).transpose(1, 2).contiguous()
