"""Random weights for a model built on `meta`, streamed into safetensors files a chunk at a time (never more than one
chunk held). Each tensor draws from a generator seeded by (seed, name), so the bytes do not depend on the sharding and a
shallow copy's layers equal the full build's; values follow transformers' initialisation."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
ITEM_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
CHUNK_VALUES = 1 << 24  # values drawn at once: 64 MB of float32
SHARD_BYTES = 5 * 10**9  # the hub's usual shard size
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


@dataclass(frozen=True)
class TensorPlan:
    name: str  # the state-dict key
    shape: tuple[int, ...]
    init: str  # normal | ones | zeros

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def tensor_plans(model: torch.nn.Module) -> list[TensorPlan]:
    """Every tensor the checkpoint stores, once: a tied lm_head is the embedding's and is not written
    (transformers ties it again on load); non-persistent buffers (rotary frequencies) are not stored."""
    seen: set[int] = set()
    plans = []
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        init = "zeros" if name.endswith(".bias") else "normal" if tensor.dim() >= 2 else "ones"
        plans.append(TensorPlan(name, tuple(tensor.shape), init))
    return plans


def shard(plans: list[TensorPlan], dtype: str, limit: int = SHARD_BYTES) -> list[list[TensorPlan]]:
    """Tensors in order, cut into files of at most `limit` bytes (a larger tensor gets a file of its own)."""
    shards: list[list[TensorPlan]] = [[]]
    size = 0
    for p in plans:
        nbytes = p.numel * ITEM_BYTES[dtype]
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(p)
        size += nbytes
    return shards


def tensor_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") >> 1


class Scratch:
    """The two chunk buffers (float32 draws, their cast), reused: fresh ones per chunk cost as much as drawing."""

    def __init__(self, dtype: str) -> None:
        import torch

        self.target = getattr(torch, dtype)
        self.draws = torch.empty(0)
        self.cast = torch.empty(0, dtype=self.target)

    def views(self, shape: tuple[int, ...]):
        import torch

        n = 1
        for d in shape:
            n *= d
        if self.draws.numel() < n:
            self.draws = torch.empty(max(n, CHUNK_VALUES))
            self.cast = torch.empty(self.draws.numel(), dtype=self.target)
        return self.draws[:n].view(shape), self.cast[:n].view(shape)


def chunks(plan: TensorPlan, seed: int, std: float, scratch: Scratch):
    """The tensor's values in row blocks of at most CHUNK_VALUES, in the scratch's dtype (valid until the next)."""
    import torch

    rows = plan.shape[0] if plan.shape else 1
    row = plan.numel // max(rows, 1)
    step = max(1, CHUNK_VALUES // max(row, 1))
    generator = torch.Generator().manual_seed(tensor_seed(seed, plan.name))
    for start in range(0, rows, step):
        shape = (min(step, rows - start), *plan.shape[1:]) if plan.shape else ()
        draws, cast = scratch.views(shape)
        if plan.init == "normal":
            torch.randn(shape, generator=generator, out=draws).mul_(std)
            cast.copy_(draws)
        else:
            cast.fill_(1.0 if plan.init == "ones" else 0.0)
        yield cast


def _header(plans: list[TensorPlan], dtype: str) -> bytes:
    entries: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for p in plans:
        end = offset + p.numel * ITEM_BYTES[dtype]
        entries[p.name] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(p.shape), "data_offsets": [offset, end]}
        offset = end
    text = json.dumps(entries, separators=(",", ":")).encode()
    return text + b" " * (-len(text) % 8)


def write_file(path: Path, plans: list[TensorPlan], dtype: str, seed: int, std: float,
               advance: Callable[[int], None]) -> None:
    """One safetensors file holding `plans`, streamed chunk by chunk; `advance(bytes)` after each chunk."""
    import torch

    if sys.byteorder != "little":
        raise RuntimeError("safetensors data is little-endian; this machine is not")
    header = _header(plans, dtype)
    scratch = Scratch(dtype)
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little"))
        f.write(header)
        for p in plans:
            for block in chunks(p, seed, std, scratch):
                data = block.contiguous().view(-1).view(torch.uint8).numpy()
                f.write(memoryview(data))
                advance(data.nbytes)


def write_weights(out: Path, plans: list[TensorPlan], dtype: str, seed: int, std: float,
                  advance: Callable[[int], None] = lambda _n: None, shard_bytes: int = SHARD_BYTES) -> list[str]:
    """model.safetensors, or shards + model.safetensors.index.json as the hub lays them out; the file names."""
    shards = shard(plans, dtype, shard_bytes)
    if len(shards) == 1:
        write_file(out / SINGLE_FILE, shards[0], dtype, seed, std, advance)
        return [SINGLE_FILE]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, part in zip(names, shards):
        write_file(out / name, part, dtype, seed, std, advance)
    index = {"metadata": {"total_size": sum(p.numel for p in plans) * ITEM_BYTES[dtype]},
             "weight_map": {p.name: name for name, part in zip(names, shards) for p in part}}
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return names + [INDEX_FILE]
