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


def test_oom_in_a_later_stage_shrinks_that_stage_and_restarts_only_it(write_spec):
    """A staged run that ran out of memory in stage 2: stage 2's micro-batch shrinks (stage 1's does not: it
    is complete and never reruns); a restart drops stage 2's trainer state and its epochs, never stage 1's."""
    import json

    from tunelab.execute import retry
    from tunelab.execute.failures import OOM, Failure
    from tunelab.scaffold.write import scaffold

    spec = write_spec(controls=False, factors={"lora_rank": [4]},
                      stages=[{"name": "one", "epochs": 1}, {"name": "two", "epochs": 2, "batch_size": 6}])
    cfg = scaffold(spec).runs[0]
    run = cfg.run_dir
    (run / "stages.json").write_text(json.dumps([{
        "name": "one", "index": 0, "dataset": "caps", "optimizer": "fresh", "epochs": [0], "first_step": 0,
        "last_step": 40, "examples": 320, "counters": {}}]))
    for rel in ("checkpoints/epoch_0", "checkpoints/epoch_1", "trainer_state/one/checkpoint-40",
                "trainer_state/two/checkpoint-30"):
        (run / rel).mkdir(parents=True)
    for epoch in (0, 1):
        for name in ("adapter_model.safetensors", "adapter_config.json"):
            (run / f"checkpoints/epoch_{epoch}" / name).write_text("x")
    (run / "trainer_state/two/checkpoint-30/trainer_state.json").write_text(
        json.dumps({"epoch": 0.55, "global_step": 30, "max_steps": 108}))  # mid-epoch: cannot resume exactly

    decision = retry.decide(cfg, Failure(OOM, "CUDA out of memory"))
    assert decision.retry and decision.restart and "stage two" in decision.reason
    new = decision.config
    assert (new.stages[0].training.batch_size, new.stages[0].training.gradient_accumulation_steps) == (8, 1)
    assert (new.stages[1].training.batch_size, new.stages[1].training.gradient_accumulation_steps) == (3, 2)
    assert new.training.batch_size == 8  # the run-level training is not what stage two trains with
    retry.apply(decision)
    assert not (run / "trainer_state/two").exists() and not (run / "checkpoints/epoch_1").exists()
    assert (run / "trainer_state/one/checkpoint-40").is_dir() and (run / "checkpoints/epoch_0").is_dir()
    assert retry.differs_only_by_retries(new, cfg.model_copy(update={"estimate": None}))
