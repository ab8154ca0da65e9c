"""The caching-allocator model of the memory simulator (estimate/simulator/allocator.py), checked against
hand-computed figures from PyTorch's CUDACachingAllocator rules: 512-byte rounding, 2 MiB segments for
requests <= 1 MiB, 20 MiB segments for requests < 10 MiB, larger ones a segment of their size rounded up to
2 MiB; best fit; a small block is split when >= 512 bytes remain, a large one when > 1 MiB remains; freed
neighbours merge."""

from __future__ import annotations

import pytest

from tunelab.estimate.simulator.allocator import CachingAllocatorModel, round_size, segment_size

KiB, MiB = 1 << 10, 1 << 20


@pytest.mark.parametrize(("nbytes", "expected"), [
    (0, 512),                   # nothing still takes the minimum block
    (1, 512),
    (511, 512),
    (512, 512),
    (513, 1024),
    (1000, 1024),
    (4097, 9 * 512),            # 8 blocks hold 4096: one more
    (1 * MiB, 1 * MiB),
    (1 * MiB + 1, 1 * MiB + 512),
    (7 * MiB + 300, 7 * MiB + 512),
])
def test_round_size_rounds_up_to_512_bytes_with_a_512_minimum(nbytes, expected):
    assert round_size(nbytes) == expected


@pytest.mark.parametrize(("block", "expected"), [
    (512, 2 * MiB),               # small pool: 2 MiB segments
    (1 * MiB, 2 * MiB),           # 1 MiB is still small
    (1 * MiB + 512, 20 * MiB),    # large pool, under 10 MiB: a 20 MiB segment
    (10 * MiB - 512, 20 * MiB),
    (10 * MiB, 10 * MiB),         # from 10 MiB: its own size rounded up to 2 MiB
    (10 * MiB + 512, 12 * MiB),
    (21 * MiB, 22 * MiB),
    (22 * MiB, 22 * MiB),
])
def test_segment_size_by_pool(block, expected):
    assert segment_size(block) == expected


def test_first_request_reserves_a_segment_and_allocates_the_rounded_block():
    a = CachingAllocatorModel()
    a.malloc(1000)
    assert (a.allocated, a.reserved, a.segments) == (1024, 2 * MiB, 1)


def test_freed_large_block_is_reused_for_an_equal_request():
    a = CachingAllocatorModel()
    h = a.malloc(12 * MiB)          # >= 10 MiB: a segment of exactly 12 MiB
    assert (a.allocated, a.reserved) == (12 * MiB, 12 * MiB)
    a.free(h)
    assert (a.allocated, a.reserved) == (0, 12 * MiB)  # reserved memory is kept, not returned
    a.malloc(12 * MiB)
    # reused: without the cache a second 12 MiB segment would make reserved 24 MiB
    assert (a.allocated, a.reserved, a.segments) == (12 * MiB, 12 * MiB, 1)


def test_freed_small_block_is_reused_when_its_segment_is_otherwise_full():
    a = CachingAllocatorModel()
    first = a.malloc(1 * MiB)       # a 2 MiB small segment, split: 1 MiB used, 1 MiB free
    a.malloc(1 * MiB)               # takes the free half: the segment is full
    assert (a.allocated, a.reserved, a.segments) == (2 * MiB, 2 * MiB, 1)
    a.free(first)
    a.malloc(1 * MiB - 100)         # rounds to 1 MiB: exactly the freed block
    assert (a.allocated, a.reserved, a.segments) == (2 * MiB, 2 * MiB, 1)


def test_large_segment_is_split_and_the_rest_serves_later_requests():
    a = CachingAllocatorModel()
    a.malloc(3 * MiB)               # < 10 MiB: a 20 MiB segment, 17 MiB left free (> 1 MiB: split off)
    assert (a.allocated, a.reserved) == (3 * MiB, 20 * MiB)
    a.malloc(5 * MiB)               # from the 17 MiB rest: 12 MiB left
    a.malloc(12 * MiB)              # exactly the rest (12 MiB >= 10 MiB would otherwise get its own segment)
    assert (a.allocated, a.reserved, a.segments) == (20 * MiB, 20 * MiB, 1)
    a.malloc(2 * MiB)               # nothing free in the large pool: a second 20 MiB segment
    assert (a.allocated, a.reserved, a.segments) == (22 * MiB, 40 * MiB, 2)


def test_large_block_rest_of_one_mib_or_less_is_not_split_off():
    a = CachingAllocatorModel()
    a.malloc(3 * MiB)               # 17 MiB free rest
    a.malloc(16 * MiB)              # takes the 17 MiB block; 1 MiB would remain: not > 1 MiB, so no split
    assert (a.allocated, a.reserved, a.segments) == (3 * MiB + 17 * MiB, 20 * MiB, 1)
    b = CachingAllocatorModel()
    b.malloc(11 * MiB)              # own segment of 12 MiB; the 1 MiB rest stays part of the block
    assert (b.allocated, b.reserved) == (12 * MiB, 12 * MiB)


def test_small_block_is_split_when_512_bytes_remain():
    s = CachingAllocatorModel()
    s.malloc(1 * MiB)
    s.malloc(1 * MiB - 512)         # leaves exactly 512 bytes in the 2 MiB segment: split off
    s.malloc(512)                   # ... and they serve this request without a new segment
    assert (s.allocated, s.reserved, s.segments) == (2 * MiB, 2 * MiB, 1)


def test_best_fit_takes_the_smallest_free_block_that_fits():
    a = CachingAllocatorModel()
    x1 = a.malloc(6 * MiB)          # one 20 MiB segment: 6 | 2 | 3 | 9 (full)
    a.malloc(2 * MiB)
    x3 = a.malloc(3 * MiB)
    a.malloc(9 * MiB)
    assert (a.allocated, a.reserved, a.segments) == (20 * MiB, 20 * MiB, 1)
    a.free(x1)
    a.free(x3)                      # free: 6 MiB and 3 MiB, not adjacent (the 2 MiB block between)
    assert a.allocated == 11 * MiB
    a.malloc(2 * MiB + 512 * KiB)
    # best fit is the 3 MiB block; the 0.5 MiB rest is not split off, so the whole 3 MiB is allocated
    # (the 6 MiB block would have been split, allocating 2.5 MiB)
    assert (a.allocated, a.reserved) == (14 * MiB, 20 * MiB)
    a.malloc(5 * MiB)               # only the 6 MiB block is left: rest 1 MiB, not split
    assert (a.allocated, a.reserved, a.segments) == (20 * MiB, 20 * MiB, 1)


def test_freed_neighbours_merge_so_their_combined_size_fits():
    a = CachingAllocatorModel()
    x = a.malloc(4 * MiB)           # one 20 MiB segment: 4 | 4 | 12 (full)
    y = a.malloc(4 * MiB)
    a.malloc(12 * MiB)
    assert (a.reserved, a.segments) == (20 * MiB, 1)
    a.free(x)
    a.free(y)                       # merge with its free left neighbour: one 8 MiB block
    a.malloc(8 * MiB)
    # no new segment: two unmerged 4 MiB blocks could not hold 8 MiB and a second 20 MiB segment would be taken
    assert (a.allocated, a.reserved, a.segments) == (20 * MiB, 20 * MiB, 1)


def test_block_freed_between_two_free_neighbours_merges_both_ways():
    a = CachingAllocatorModel()
    x = a.malloc(4 * MiB)           # 4 | 4 | 12 in one 20 MiB segment
    y = a.malloc(4 * MiB)
    z = a.malloc(12 * MiB)
    a.free(x)
    a.free(z)
    a.free(y)                       # merges with x on the left and z on the right: the whole 20 MiB free
    a.malloc(20 * MiB)              # >= 10 MiB would take a new 20 MiB segment if the merge had failed
    assert (a.allocated, a.reserved, a.segments) == (20 * MiB, 20 * MiB, 1)


def test_small_and_large_pools_do_not_share_free_blocks():
    a = CachingAllocatorModel()
    h = a.malloc(2 * MiB)           # large pool: a 20 MiB segment
    a.free(h)
    a.malloc(1 * MiB)               # a small request never takes a large-pool block: a 2 MiB segment
    assert (a.allocated, a.reserved, a.segments) == (1 * MiB, 22 * MiB, 2)


def test_peaks_track_maxima_and_reset_to_current():
    a = CachingAllocatorModel()
    h1 = a.malloc(3 * MiB)          # 3 MiB in a 20 MiB segment
    h2 = a.malloc(12 * MiB)         # from the 17 MiB rest (split: 5 MiB left)
    assert (a.peak_allocated, a.peak_reserved) == (15 * MiB, 20 * MiB)
    a.free(h2)
    a.free(h1)
    assert (a.allocated, a.reserved) == (0, 20 * MiB)
    assert (a.peak_allocated, a.peak_reserved) == (15 * MiB, 20 * MiB)  # peaks are not lowered by a free
    a.malloc(1000)                  # 1024 bytes in a new 2 MiB small segment
    assert (a.allocated, a.reserved) == (1024, 22 * MiB)
    assert (a.peak_allocated, a.peak_reserved) == (15 * MiB, 22 * MiB)
    a.reset_peaks()
    assert (a.peak_allocated, a.peak_reserved) == (1024, 22 * MiB)
    a.malloc(4 * MiB)               # fits in the cached 20 MiB segment: only allocated rises
    assert (a.peak_allocated, a.peak_reserved) == (1024 + 4 * MiB, 22 * MiB)
