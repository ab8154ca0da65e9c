"""PyTorch's `varlen_attn` called the way the installed release takes it: its signature read once, the call adapted,
since its keywords changed in every release from 2.10 (causality a flag, then a window; `enable_gqa` from 2.12). Passing
a keyword a release lacks crashed a GPU lease. Without `enable_gqa` the key/value heads are repeated (the simulator
prices the copies), a scale is folded into the query (exact), and a window the release cannot take sends the layer to
per-sequence SDPA (models/varlen.py)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
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
