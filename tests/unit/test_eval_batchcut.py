"""batchcut.py's cut against an exhaustive search: every way to split the rows, longest first, into batches of at
most max_rows, priced as the cut prices them (rows × longest + a cost a batch), and the least found independently."""

from __future__ import annotations

import itertools
import random

import pytest

from tunelab.evaluate.batchcut import CPU_DECODE_STEP_TOKENS, batch_cost, cut, longest_first
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
    assert [len(b) for b in cut(lengths, 16, batch_cost(12, "cpu"))] == [1, 15]  # 400 + 252 + 750 + 252 < 16 × 400 + 252
    assert [len(b) for b in cut(lengths, 16, None)] == [16]
    assert batch_cost(12, "cuda:0") is None and batch_cost(12, "cpu") == 12 * CPU_DECODE_STEP_TOKENS
    with pytest.raises(ValueError, match="at least one row"):
        cut(lengths, 0, 1.0)


def test_the_queue_cuts_its_next_batch_as_the_whole_cut_does():
    """cut_batch (one batch at a time from what waits) takes the cut's batches in turn, and keeps to the adapter
    it answered last while its rows last."""
    rng = random.Random(7)
    rows = [(list(range(max(1, round(rng.lognormvariate(4.0, 1.0))))), adapter) for adapter in ("a", "b")
            for _ in range(20)]
    key = {id(r): RowKey(8, adapter=r[1]) for r in rows}
    pending, got, last = list(rows), [], None
    while pending:
        batch = cut_batch(pending, lambda r: r[0], lambda r: key[id(r)], 6, 1, CPU_DECODE_STEP_TOKENS, last)
        assert len({r[1] for r in batch}) == 1
        if last is not None and any(r[1] == last for r in pending):
            assert batch[0][1] == last
        last = batch[0][1]
        got.append((last, [len(r[0]) for r in batch]))
        pending = [r for r in pending if not any(r is b for b in batch)]
    for adapter in ("a", "b"):
        lengths = [len(p) for p, a in rows if a == adapter]
        want = [[lengths[i] for i in b] for b in cut(lengths, 6, 8 * CPU_DECODE_STEP_TOKENS)]
        assert [b for a, b in got if a == adapter] == want
    assert len(list(itertools.groupby(a for a, _ in got))) == 2  # one adapter's rows, then the other's
