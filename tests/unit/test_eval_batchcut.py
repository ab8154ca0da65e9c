"""batchcut.py's cut against an exhaustive search: every way to split the rows, longest first, into batches of at
most max_rows, priced as the cut prices them (rows × longest + a cost a batch), and the least found independently;
and a CPU's decode batches (two batch sizes of rows, longest first) each cut so into its prefill groups."""

from __future__ import annotations

import itertools
import random

import pytest

from tunelab.evaluate.batchcut import (
    CPU_DECODE_STEP_TOKENS,
    JOINT_BATCHES,
    cut,
    decode_batches,
    decode_rows,
    longest_first,
    prefill_groups,
)
from tunelab.evaluate.mixbatch import RowKey, cut_batch


def priced(lengths: list[int], batches: list[list[int]], cost: float) -> float:
    return sum(max(lengths[i] for i in b) * len(b) + cost for b in batches)


def cheapest(lengths: list[int], max_rows: int, cost: float) -> float:
    """The least price over every split of the longest-first order (2^(n-1) of them)."""
    order = longest_first(lengths)
    best = float("inf")
    for cuts in itertools.product((False, True), repeat=len(order) - 1):
        batches, cur = [], [order[0]]
        for i, new in zip(order[1:], cuts):
            if new:
                batches.append(cur)
                cur = []
            cur.append(i)
        batches.append(cur)
        if all(len(b) <= max_rows for b in batches):
            best = min(best, priced(lengths, batches, cost))
    return best


@pytest.mark.parametrize("seed", range(12))
def test_the_cut_is_the_cheapest_split(seed):
    rng = random.Random(seed)
    lengths = [max(1, round(rng.lognormvariate(4.0, 1.2))) for _ in range(rng.randint(1, 11))]
    max_rows, cost = rng.randint(1, 6), rng.choice([0.0, 10.0, 80.0, 480.0])
    batches = cut(lengths, max_rows, cost)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # every row once
    assert all(1 <= len(b) <= max_rows for b in batches)
    assert priced(lengths, batches, cost) == pytest.approx(cheapest(lengths, max_rows, cost))


def test_a_long_row_is_cut_away_from_short_ones_and_no_cost_cuts_by_rows():
    lengths = [400] + [50] * 15
    assert [len(b) for b in prefill_groups(lengths, 16, "cpu")] == [1, 15]  # 400 + 33 + 750 + 33 < 16 × 400 + 33
    assert [len(b) for b in cut(lengths, 16, None)] == [16]
    assert [len(b) for b in prefill_groups(lengths, 16, "cuda:0")] == [16]  # a GPU: one group, a batch size of rows
    assert (decode_rows(16, "cpu"), decode_rows(16, "cuda:0"), decode_rows(16, None)) == (16 * JOINT_BATCHES, 16, 16)
    with pytest.raises(ValueError, match="at least one row"):
        cut(lengths, 0, 1.0)


@pytest.mark.parametrize("seed", range(4))
def test_a_cpus_decode_batches_hold_two_batch_sizes_longest_first_each_cut_into_its_cheapest_groups(seed):
    rng = random.Random(seed)
    lengths = [max(1, round(rng.lognormvariate(4.0, 1.2))) for _ in range(rng.randint(11, 25))]
    batches = decode_batches(lengths, 5, "cpu")
    rows = [[i for g in b for i in g] for b in batches]
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))  # every row once
    assert [len(r) for r in rows[:-1]] == [10] * (len(rows) - 1) and 1 <= len(rows[-1]) <= 10
    for before, after in zip(rows, rows[1:]):  # longest first across the batches
        assert min(lengths[i] for i in before) >= max(lengths[i] for i in after)
    for batch, mine in zip(batches, rows):
        assert all(1 <= len(g) <= 5 for g in batch)
        own = [lengths[i] for i in mine]
        groups = [[mine.index(i) for i in g] for g in batch]
        assert priced(own, groups, CPU_DECODE_STEP_TOKENS) == pytest.approx(cheapest(own, 5, CPU_DECODE_STEP_TOKENS))
    gpu = decode_batches(lengths, 5, "cuda:0")
    assert all(len(b) == 1 for b in gpu) and [len(b[0]) for b in gpu][:-1] == [5] * (len(gpu) - 1)


def test_the_queue_cuts_its_next_batch_as_the_whole_cut_does():
    """cut_batch (one batch at a time from what waits) takes an adapter's rows longest first, decode_rows at a time
    (shared.py cuts their prefill groups), and keeps to the adapter it answered last while its rows last."""
    rng = random.Random(7)
    rows = [(list(range(max(1, round(rng.lognormvariate(4.0, 1.0))))), adapter) for adapter in ("a", "b")
            for _ in range(20)]
    key = {id(r): RowKey(8, adapter=r[1]) for r in rows}
    pending, got, last = list(rows), [], None
    while pending:
        batch = cut_batch(pending, lambda r: r[0], lambda r: key[id(r)], 6, 1, 12, last)
        assert len({r[1] for r in batch}) == 1
        if last is not None and any(r[1] == last for r in pending):
            assert batch[0][1] == last
        last = batch[0][1]
        got.append((last, [len(r[0]) for r in batch]))
        pending = [r for r in pending if not any(r is b for b in batch)]
    for adapter in ("a", "b"):
        lengths = sorted((len(p) for p, a in rows if a == adapter), reverse=True)
        assert [b for a, b in got if a == adapter] == [lengths[:12], lengths[12:]]  # decode_rows each, longest first
    assert len(list(itertools.groupby(a for a, _ in got))) == 2  # one adapter's rows, then the other's
