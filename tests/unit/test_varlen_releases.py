"""Packed attention on every PyTorch release in range that has `varlen_attn` (models/varlen.py).

No GPU runs here, so each release's `varlen_attn` is stood in for by a function with that release's exact
signature (copied from the released wheels' torch/nn/attention/varlen.py: 2.10.0, 2.11.0, 2.12.0, the same
through 2.15.0) that computes what FlashAttention's variable-length kernel computes — each example alone, causal
through the flag or the window (left, right), grouped-query heads only where the release accepts them — with
SDPA. A keyword the release does not take is a TypeError, as it was on the first GPU lease (2.11 and
`enable_gqa`); heads that differ without `enable_gqa` are refused, as 2.12 refuses them.

The layer's output is compared with attention worked out independently in float32 (scores, mask, softmax,
values, per example). Inputs are bfloat16 (the kernel's dtype): the tolerance 2e-2 is a few bf16 roundings of
values of order 1, while a wrong mask, a missed scale or mixed-up heads move outputs by > 0.1.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.attention.varlen as torch_varlen

from tunelab.models import varlen
from tunelab.models.varlen import installed_varlen

LENGTHS = [7, 1, 12, 5]  # examples packed into one row, a one-token example among them
HEAD_DIM = 16


def _kernel(q, k, v, cu, causal: bool, scale, window_size, gqa: bool) -> torch.Tensor:
    if k.shape[1] != q.shape[1] and not gqa:
        raise ValueError(f"Expect query and key/value to have the same number of heads but got Hq={q.shape[1]} "
                         f"and Hkv={k.shape[1]}. Try setting enable_gqa=True for GQA.")
    left, right = window_size
    out = []
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        i = torch.arange(b - a)
        keep = torch.ones(b - a, b - a, dtype=torch.bool)
        if causal:
            keep &= i[None, :] <= i[:, None]
        if left >= 0:
            keep &= i[None, :] >= i[:, None] - left
        if right >= 0:
            keep &= i[None, :] <= i[:, None] + right
        qs, ks, vs = (t[a:b].transpose(0, 1) for t in (q, k, v))
        out.append(torch.nn.functional.scaled_dot_product_attention(
            qs, ks, vs, attn_mask=keep, scale=scale, enable_gqa=gqa).transpose(0, 1))
    return torch.cat(out)


def varlen_attn_2_10(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
    return _kernel(query, key, value, cu_seq_q, is_causal, None, (-1, -1), gqa=False)


def varlen_attn_2_11(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                     window_size=(-1, -1)):
    return _kernel(query, key, value, cu_seq_q, window_size == (-1, 0), scale, window_size, gqa=False)


def varlen_attn_2_12(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                     window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None):
    return _kernel(query, key, value, cu_seq_q, window_size == (-1, 0), scale, window_size, gqa=enable_gqa)


RELEASES = {"2.10": varlen_attn_2_10, "2.11": varlen_attn_2_11, "2.12-2.15": varlen_attn_2_12}


@pytest.fixture
def release(request, monkeypatch):
    """The stand-in of one release installed as torch's varlen_attn, read afresh by tunelab."""
    monkeypatch.setattr(torch_varlen, "varlen_attn", RELEASES[request.param])
    monkeypatch.setattr(varlen, "KERNELS_USED", {})
    installed_varlen.cache_clear()
    yield request.param
    installed_varlen.cache_clear()


def _inputs(heads: int, kv_heads: int):
    gen = torch.Generator().manual_seed(0)
    n = sum(LENGTHS)
    q, k, v = (torch.randn(1, h, n, HEAD_DIM, generator=gen).to(torch.bfloat16) for h in (heads, kv_heads, kv_heads))
    position_ids = torch.cat([torch.arange(t) for t in LENGTHS])[None]
    return q, k, v, position_ids


def _expected(q, k, v, scale: float, window: int | None) -> torch.Tensor:
    """Each example alone in float32: key j seen by query i when j <= i (and i - j < window) — (1, S, H, D)."""
    q, k, v = (t[0].float() for t in (q, k, v))
    k, v = (t.repeat_interleave(q.shape[0] // t.shape[0], dim=0) for t in (k, v))  # head h reads kv head h // g
    out, start = [], 0
    for n in LENGTHS:
        s = slice(start, start + n)
        i = torch.arange(n)
        keep = (i[None, :] <= i[:, None]) & ((i[:, None] - i[None, :] < window) if window else True)
        scores = (q[:, s] @ k[:, s].transpose(-1, -2) * scale).masked_fill(~keep, float("-inf"))
        out.append(torch.softmax(scores, dim=-1) @ v[:, s])
        start += n
    return torch.cat(out, dim=1).transpose(0, 1)[None]


def _layer(q, k, v, position_ids, scale: float, window: int | None) -> torch.Tensor:
    with varlen.as_if_on("cuda"):  # the GPU path on CPU tensors: the stand-in is the kernel
        out, _ = varlen.varlen_attention(torch.nn.Module(), q, k, v, None, scaling=scale, sliding_window=window,
                                         position_ids=position_ids)
    return out


@pytest.mark.parametrize("release", list(RELEASES), indirect=True)
@pytest.mark.parametrize("kv_heads", [2, 4], ids=["gqa", "mha"])
@pytest.mark.parametrize("window", [None, 4], ids=["full", "window4"])
def test_packed_attention_equals_each_example_alone_on_every_release(release, kv_heads, window):
    q, k, v, pos = _inputs(4, kv_heads)
    scale = HEAD_DIM**-0.5
    out = _layer(q, k, v, pos, scale, window)
    assert out.shape == (1, sum(LENGTHS), 4, HEAD_DIM)
    torch.testing.assert_close(out.float(), _expected(q, k, v, scale, window), atol=2e-2, rtol=0)
    path = varlen.kernels_used()
    if release == "2.10" and window:  # 2.10 takes no window: per-sequence SDPA, and the reason is recorded
        assert path == "per-sequence sdpa (a sliding window (4): PyTorch " + torch.__version__ + \
            "'s varlen_attn takes none)"
    elif release != "2.12-2.15" and kv_heads == 2:  # no enable_gqa: heads repeated, and said so
        assert path == f"varlen_attn (key/value heads repeated 2x: no enable_gqa in PyTorch {torch.__version__})"
    else:
        assert path == "varlen_attn"


@pytest.mark.parametrize("release", list(RELEASES), indirect=True)
def test_a_scale_other_than_the_default_reaches_the_scores(release):
    """Gemma-style scaling (not 1/√D): 2.10 takes no scale argument, so it is folded into the query."""
    q, k, v, pos = _inputs(4, 2)
    out = _layer(q, k, v, pos, 0.5, None)
    torch.testing.assert_close(out.float(), _expected(q, k, v, 0.5, None), atol=3e-2, rtol=0)
    assert ("scale folded into the query" in (varlen.kernels_used() or "")) == (release == "2.10")


def test_a_signature_that_cannot_be_made_causal_is_not_called(monkeypatch):
    """A future release without is_causal or window_size: per-sequence SDPA, the signature named."""
    def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None):
        raise AssertionError("called")

    monkeypatch.setattr(torch_varlen, "varlen_attn", varlen_attn)
    monkeypatch.setattr(varlen, "KERNELS_USED", {})
    installed_varlen.cache_clear()
    try:
        q, k, v, pos = _inputs(4, 4)
        out = _layer(q, k, v, pos, HEAD_DIM**-0.5, None)
        torch.testing.assert_close(out.float(), _expected(q, k, v, HEAD_DIM**-0.5, None), atol=2e-2, rtol=0)
        assert "takes neither window_size nor is_causal" in varlen.kernels_used()
    finally:
        installed_varlen.cache_clear()


def test_the_installed_release_is_read_as_its_signature_says():
    """This environment's own torch (constraints.txt) against the family its version belongs to."""
    call = installed_varlen()
    major_minor = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    if major_minor < (2, 10):
        assert isinstance(call, str) and "has no torch.nn.attention.varlen" in call
        return
    assert not isinstance(call, str)
    assert (call.takes_gqa, call.takes_window, call.causal_flag) == (
        (major_minor >= (2, 12)), major_minor >= (2, 11), major_minor == (2, 10))
