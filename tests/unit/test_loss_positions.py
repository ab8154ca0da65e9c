"""models/loss_positions.py: which positions' logits a step keeps (the trainer's rule) and the share the plan times
(its kept_share), each against positions and counts worked out here by hand."""

from __future__ import annotations

import pytest

from tunelab.models.loss_positions import kept_logits_inputs, kept_share

X = -100


def test_a_row_keeps_the_positions_before_its_answer_tokens_with_their_labels():
    import torch

    labels = torch.tensor([[X, X, X, 7, 8, X], [X, 5, X, X, X, X]])
    got = kept_logits_inputs(labels)
    # position t predicts t + 1: row 0's answers at 3, 4 → positions 2, 3; row 1's at 1 → position 0; the union
    assert got["logits_to_keep"].tolist() == [0, 2, 3]
    assert got["shift_labels"].tolist() == [[X, 7, 8], [5, X, X]]


@pytest.mark.parametrize("labels", [[[X, X, X, X]], [[1, 2, 3, 4]], [[X, 2, 3, 4]], [[5]]])
def test_nothing_to_drop_or_nothing_kept_takes_the_full_path(labels):
    import torch

    assert kept_logits_inputs(torch.tensor(labels)) == {}


def test_the_kept_share_of_packed_rows_is_their_answer_tokens_over_their_tokens():
    rows = [(10, 7), (20, 18), (600, 590)]  # (tokens, first answer position); 600 cut at 512: 0 answer tokens left
    assert kept_share(rows, batch_size=1, packed=True, max_seq_len=512) == pytest.approx((3 + 2 + 0) / (10 + 20 + 512))


def test_the_kept_share_of_padded_batches_is_the_union_of_their_rows_answers_over_the_longest():
    rows = [(10, 7), (6, 3), (8, 6)]  # answers at 7..9, 3..5, 6..7 → kept positions 6..8, 2..4, 5..6
    # batches of 2 in order: {6,7,8} ∪ {2,3,4} = 6 of 10; then {5,6} = 2 of 8
    assert kept_share(rows, batch_size=2, packed=False, max_seq_len=512) == pytest.approx((6 + 2) / (10 + 8))
    assert kept_share([], batch_size=2, packed=False, max_seq_len=512) == 1.0


def test_overlapping_answers_in_a_padded_batch_are_counted_once():
    rows = [(10, 5), (8, 4), (9, 9)]  # answers 5..9 → positions 4..8; 4..7 → 3..6; none; one batch of 3
    assert kept_share(rows, batch_size=3, packed=False, max_seq_len=512) == pytest.approx(6 / 10)  # 3..8
