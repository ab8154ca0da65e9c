"""How many timed repeats the job spends on the step-cost split after training (train/step_cost.py): one per
20 steps trained, at most 4, none under 20 steps. A repeat is a step at half and one at twice the micro-batch."""

from __future__ import annotations

import pytest

from tunelab.train.step_cost import repeats_after


@pytest.mark.parametrize("steps, repeats", [(0, 0), (3, 0), (19, 0), (20, 1), (39, 1), (40, 2), (79, 3),
                                            (80, 4), (160, 4), (100_000, 4)])
def test_repeats_grow_with_the_run_up_to_the_cap(steps, repeats):
    assert repeats_after(steps) == repeats
