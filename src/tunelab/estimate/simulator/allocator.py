"""A model of PyTorch's CUDA caching allocator, so a simulated step reports what `max_memory_reserved` would: blocks
freed go back to a pool and reserved segments are never returned, which is why reserved exceeds allocated.

Modelled after CUDACachingAllocator.cpp (defaults): sizes rounded up to 512 bytes; small requests (<= 1 MiB) from 2 MiB
segments, large ones from 20 MiB segments under 10 MiB, else a segment of the request rounded to 2 MiB; best fit; splits
when the rest is >= 512 bytes (small) or > 1 MiB (large); merges with free neighbours. Not modelled: the retry that
frees cached segments when cudaMalloc fails (the model errs towards an OOM warning), expandable segments and other
options, several streams, memory outside the allocator (the context term's)."""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass, field

MIN_BLOCK = 512
SMALL_SIZE = 1 << 20
SMALL_SEGMENT = 2 << 20
LARGE_SEGMENT = 20 << 20
MIN_LARGE_ALLOC = 10 << 20
ROUND_LARGE = 2 << 20


def round_size(nbytes: int) -> int:
    """The block size a request of nbytes gets."""
    return MIN_BLOCK if nbytes < MIN_BLOCK else -(-nbytes // MIN_BLOCK) * MIN_BLOCK


def segment_size(block: int) -> int:
    """The cudaMalloc size for a request of this (rounded) size when no cached block fits."""
    if block <= SMALL_SIZE:
        return SMALL_SEGMENT
    if block < MIN_LARGE_ALLOC:
        return LARGE_SEGMENT
    return -(-block // ROUND_LARGE) * ROUND_LARGE


@dataclass(eq=False)
class _Block:
    segment: int
    offset: int
    size: int
    small: bool
    free: bool = True
    prev: _Block | None = None
    next: _Block | None = None
    uid: int = 0


@dataclass
class CachingAllocatorModel:
    """Counts allocated (block) and reserved (segment) bytes, current and peak."""

    allocated: int = 0
    reserved: int = 0
    peak_allocated: int = 0
    peak_reserved: int = 0
    segments: int = 0
    _free: dict[bool, list[tuple[int, int, int, int]]] = field(default_factory=lambda: {True: [], False: []})
    _blocks: dict[int, _Block] = field(default_factory=dict)
    _ids: itertools.count = field(default_factory=itertools.count)

    def malloc(self, nbytes: int) -> int:
        """Allocate; returns a handle for free()."""
        size = round_size(nbytes)
        small = size <= SMALL_SIZE
        block = self._take_free(size, small) or self._new_segment(size, small)
        rest = block.size - size
        if rest >= MIN_BLOCK if small else rest > SMALL_SIZE:
            tail = _Block(block.segment, block.offset + size, rest, small, True, block, block.next, next(self._ids))
            if block.next is not None:
                block.next.prev = tail
            block.next, block.size = tail, size
            self._put_free(tail)
        block.free = False
        handle = next(self._ids)
        block.uid = handle
        self._blocks[handle] = block
        self.allocated += block.size
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        return handle

    def free(self, handle: int) -> None:
        block = self._blocks.pop(handle)
        self.allocated -= block.size
        block.free = True
        for neighbour in (block.prev, block.next):
            if neighbour is not None and neighbour.free:
                self._remove_free(neighbour)
                block = self._merge(block, neighbour)
        self._put_free(block)

    def block_size(self, handle: int) -> int:
        return self._blocks[handle].size

    def reset_peaks(self) -> None:
        """As torch.cuda.reset_peak_memory_stats: peaks restart from the current figures."""
        self.peak_allocated, self.peak_reserved = self.allocated, self.reserved

    # -- pools ------------------------------------------------------------------------------------------
    def _new_segment(self, size: int, small: bool) -> _Block:
        seg = segment_size(size)
        self.segments += 1
        self.reserved += seg
        self.peak_reserved = max(self.peak_reserved, self.reserved)
        return _Block(self.segments, 0, seg, small, True, None, None, next(self._ids))

    def _key(self, b: _Block) -> tuple[int, int, int, int]:
        return (b.size, b.segment, b.offset, b.uid)

    def _put_free(self, b: _Block) -> None:
        b.free = True
        b.uid = next(self._ids)
        bisect.insort(self._free[b.small], self._key(b))
        self._by_key[self._key(b)] = b

    def _remove_free(self, b: _Block) -> None:
        pool = self._free[b.small]
        key = self._key(b)
        del pool[bisect.bisect_left(pool, key)]
        del self._by_key[key]

    def _take_free(self, size: int, small: bool) -> _Block | None:
        pool = self._free[small]
        i = bisect.bisect_left(pool, (size, -1, -1, -1))
        if i == len(pool):
            return None
        block = self._by_key.pop(pool.pop(i))
        return block

    @staticmethod
    def _merge(a: _Block, b: _Block) -> _Block:
        first, second = (a, b) if a.offset < b.offset else (b, a)
        first.size += second.size
        first.next = second.next
        if second.next is not None:
            second.next.prev = first
        return first

    def __post_init__(self) -> None:
        self._by_key: dict[tuple[int, int, int, int], _Block] = {}
