"""packing.json's counts (train/metrics.packing_stats) are those of the rows the trainer iterates: counted by hand
over the same rows here, for packed rows (TRL's seq_lengths) and for a filtered unpacked dataset, whose Arrow
table still holds the rows the filter dropped."""

from __future__ import annotations

import datasets

from tunelab.train.metrics import packing_stats


def test_unpacked_counts_only_the_rows_a_filter_kept():
    rows = [{"input_ids": list(range(n))} for n in (5, 30, 7, 12, 0, 9)]
    kept = datasets.Dataset.from_list(rows).filter(lambda r: len(r["input_ids"]) != 30)  # an indices mapping
    stats = packing_stats(kept, 32, packed=False)
    assert (stats.examples, stats.sequences, stats.tokens) == (5, 5, 5 + 7 + 12 + 0 + 9)
    assert stats.density == 1.0 and stats.fill_fraction is None


def test_packed_counts_the_examples_inside_each_row():
    lengths = [[10, 6], [16], [3, 4, 5]]
    packed = datasets.Dataset.from_list([{"input_ids": list(range(sum(s))), "seq_lengths": s} for s in lengths])
    stats = packing_stats(packed, 16, packed=True)
    assert (stats.examples, stats.sequences, stats.tokens) == (6, 3, 16 + 16 + 12)
    assert stats.density == round(6 / 3, 4) and stats.fill_fraction == round(44 / (3 * 16), 4)
    empty = packing_stats(packed.select([]), 16, packed=True)
    assert (empty.examples, empty.sequences, empty.tokens, empty.density) == (0, 0, 0, None)
