"""The OOM retry keeps every optimizer step's examples and the schedule, for any dataset size: checked
against the HF Trainer's own step arithmetic (a transformers upgrade that changed it would fail here)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from tunelab.execute.retry import shrink_micro_batch


def _hf_steps(n: int, b: int, g: int, epochs: int = 3) -> tuple[int, int]:
    """(optimizer steps per epoch, max_steps) as transformers' Trainer computes them for this dataloader."""
    from torch.utils.data import DataLoader
    from transformers import Trainer

    me = SimpleNamespace(get_total_train_batch_size=lambda args: b * g, get_sp_size=lambda: 1,
                         num_examples=lambda dl: len(dl.dataset))
    args = SimpleNamespace(max_steps=-1, num_train_epochs=epochs, gradient_accumulation_steps=g)
    out = Trainer.set_initial_training_values(me, args, DataLoader(list(range(n)), batch_size=b))
    return out[1], out[6]


def _windows(n: int, b: int, g: int, steps: int) -> list[list[int]]:
    """The examples of each optimizer step: HF takes g micro-batches per step, the last step the rest."""
    from torch.utils.data import DataLoader

    batches = [list(x) for x in DataLoader(list(range(n)), batch_size=b)]
    return [sum(batches[k * g:(k + 1) * g if k < steps - 1 else None], []) for k in range(steps)]


@pytest.mark.parametrize("b,g", [(8, 1), (6, 1), (4, 3), (9, 2), (7, 1), (12, 2)])
def test_oom_retry_keeps_steps_and_examples_per_step_for_any_dataset_size(b, g):
    for n in list(range(1, 70)) + [330, 1001]:
        steps, max_steps = _hf_steps(n, b, g)
        assert steps == math.ceil(n / (b * g))
        windows = _windows(n, b, g, steps)
        cb, cg = b, g
        while cb > 1:  # every retry down to micro-batch 1
            cb, cg = shrink_micro_batch(cb, cg)
            assert cb * cg == b * g
            assert _hf_steps(n, cb, cg) == (steps, max_steps), (n, b, g, cb, cg)
            assert _windows(n, cb, cg, steps) == windows, (n, b, g, cb, cg)
