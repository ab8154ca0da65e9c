"""Values the simulation does know: small integer tensors a vision-language step reads back (the tower splits per image
by `image_grid_thw`, the model finds image tokens in `input_ids`).

The inputs whose values decide shapes are registered with their real values (`remember`), and every op whose inputs all
have known values also runs on them (up to `MAX_NUMEL` elements: bookkeeping, never activations). Then `.item()` answers
the real value, a value-dependent output shape gets a fake of the real result's shape, and indexing by a known mask is a
static shape. The real copies are not counted."""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor, unset_fake_temporarily
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

MAX_NUMEL = 1 << 22
_INDEX_OPS = {torch.ops.aten.index.Tensor, torch.ops.aten.index_put.default, torch.ops.aten.index_put_.default,
              torch.ops.aten._unsafe_index_put.default}


def _small_exact(t: torch.Tensor) -> bool:
    return (not t.is_floating_point() and not t.is_complex()) and t.numel() <= MAX_NUMEL


class KnownValues:
    """Real values of some fake tensors, keyed by the fake tensor's identity (dropped when it dies)."""

    def __init__(self) -> None:
        self._values: dict[int, torch.Tensor] = {}

    def __bool__(self) -> bool:
        return bool(self._values)

    def remember(self, fake: torch.Tensor, real: torch.Tensor) -> None:
        key = id(fake)
        self._values[key] = real
        weakref.finalize(fake, self._values.pop, key, None)

    def value(self, t: Any) -> torch.Tensor | None:
        """A fake tensor's real value: remembered, or the constant fake tensors keep of a `torch.tensor(...)`
        (asked only once values are in play: a text step's answers stay the tracker's)."""
        if not isinstance(t, FakeTensor) or not self._values:
            return None
        real = self._values.get(id(t))
        return real if real is not None else t.constant

    def scalar(self, t: torch.Tensor) -> Any:
        """The real `.item()` of a known tensor, else None."""
        real = self.value(t)
        if real is None:
            return None
        with unset_fake_temporarily():
            return real.item()

    def rewrite_index(self, func: Any, args: tuple, kwargs: dict) -> tuple:
        """A known boolean mask in an index list → the long index tensors of its positions (same result)."""
        if func not in _INDEX_OPS or len(args) < 2 or not isinstance(args[1], (list, tuple)):
            return args
        indices: list[Any] = []
        changed = False
        for idx in args[1]:
            real = self.value(idx) if isinstance(idx, torch.Tensor) and idx.dtype in (torch.bool, torch.uint8) else None
            if real is None:
                indices.append(idx)
                continue
            changed = True
            with unset_fake_temporarily():
                positions = real.bool().nonzero(as_tuple=True)
            for pos in positions:
                fake = _fake_like(pos, idx)
                self.remember(fake, pos)
                indices.append(fake)
        return (args[0], indices, *args[2:]) if changed else args

    def run_known(self, func: Any, args: tuple, kwargs: dict) -> Any | None:
        """The op on real values when every tensor input is known and small; None otherwise."""
        if not self._values or torch.Tag.nondeterministic_seeded in getattr(func, "tags", ()):
            return None
        if args and isinstance(args[0], torch.Tensor) and self.value(args[0]) is None:
            return None  # the common case, decided before flattening: an activation or a weight
        flat, spec = tree_flatten((args, kwargs))
        tensors = [x for x in flat if isinstance(x, torch.Tensor)]
        if not tensors:
            return None
        reals = [self.value(x) for x in tensors]
        if any(r is None or not _small_exact(r) for r in reals):
            return None
        it = iter(reals)
        real_flat = [next(it) if isinstance(x, torch.Tensor) else x for x in flat]
        real_args, real_kwargs = tree_unflatten(real_flat, spec)
        with unset_fake_temporarily():
            return func(*real_args, **real_kwargs)

    def pair(self, out: Any, real_out: Any) -> None:
        """Remember each fake output's real counterpart (exact small tensors only)."""
        fakes, _ = tree_flatten(out)
        reals, _ = tree_flatten(real_out)
        for f, r in zip(fakes, reals):
            if isinstance(f, FakeTensor) and isinstance(r, torch.Tensor) and _small_exact(r):
                self.remember(f, r)

    def fake_of(self, real_out: Any, like: FakeTensor) -> Any:
        """Fake tensors of a real result's shapes (for ops fake tensors cannot shape), remembered."""
        def make(r: Any) -> Any:
            if not isinstance(r, torch.Tensor):
                return r
            fake = _fake_like(r, like)
            self.remember(fake, r)
            return fake

        return tree_map(make, real_out)


def _fake_like(real: torch.Tensor, like: FakeTensor) -> torch.Tensor:
    """A fresh fake tensor of `real`'s shape and dtype, made by `like`'s fake mode (called inside its dispatch)."""
    with like.fake_mode:
        return torch.empty(real.shape, dtype=real.dtype, device=like.device)
