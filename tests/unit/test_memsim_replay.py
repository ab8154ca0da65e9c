"""The simulator's last step replayed from the first (simulator/replay.py) against the same step dispatched op by op:
every figure and every phase's peak must be the same, for each kind of step tunelab simulates (packed and padded
rows, the attention kernels, gradient accumulation and checkpointing, QLoRA, DDP, full-logit loss without
autocast, DoRA, a vision-language model). And a first step that leaves more than its gradients live, or frees
what it did not allocate, is not replayed."""

from __future__ import annotations

import pytest
import torch
from test_memsim_vlm import GRID, tiny_config

from tunelab.estimate.simulator import StepConfig, StepShape, run
from tunelab.estimate.simulator import replay as replay_module
from tunelab.estimate.simulator.tracker import Malloc, StorageTracker

LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 258, "tie_word_embeddings": False,
         "max_position_embeddings": 1024}
CASES = {
    "packed-sdpa": (LLAMA, StepConfig(), StepShape(3, 64, packed=True), 1, None),
    "packed-varlen-accumulated": (LLAMA, StepConfig(attention="varlen", gradient_accumulation_steps=2),
                                  StepShape(3, 64, packed=True), 1, None),
    "padded-checkpointed": (LLAMA, StepConfig(gradient_checkpointing=True, modules_to_save=("lm_head",)),
                            StepShape(4, 40), 1, None),
    "qlora-eager": (LLAMA, StepConfig(quantize="4bit", attention="eager"), StepShape(2, 32), 1, None),
    "ddp": (LLAMA, StepConfig(gradient_accumulation_steps=2), StepShape(2, 32), 2, "ddp"),
    "full-logits-fp32-dora": (LLAMA, StepConfig(dtype="float32", loss="full_logits", autocast=False, use_dora=True,
                                                weight_decay=0.1), StepShape(2, 48), 1, None),
    "vlm": (tiny_config("qwen2_5_vl"), StepConfig(lora_targets=("q_proj", "v_proj", "qkv")),
            StepShape(2, 300, images_per_row=1, image_grid=GRID), 1, None),
}


@pytest.mark.parametrize("case", CASES)
def test_a_replayed_last_step_counts_what_the_dispatched_one_counts(case, monkeypatch):
    model, c, shape, processes, strategy = CASES[case]
    replayed: list[bool] = []
    real_of = replay_module.FirstStep.of

    def of(rec, tracker, trainable):  # the real check, its answer noted
        first = real_of(rec, tracker, trainable)
        replayed.append(first is not None)
        return first

    monkeypatch.setattr(replay_module.FirstStep, "of", of)
    full, full_phases = run._simulate_exact(model, c, shape, processes, strategy, replay=False)
    assert replayed == []
    fast, fast_phases = run._simulate_exact(model, c, shape, processes, strategy, replay=True)
    assert replayed == [True]  # the replay was taken, not the full step again
    assert fast_phases == full_phases and {p for p in full_phases if p.startswith("step 2")}
    assert {**fast.to_dict(), "seconds": 0} == {**full.to_dict(), "seconds": 0}


def _first_step(keep: bool = False, free_older: bool = False):
    """A first step on fake tensors by hand: y = (w * x).sum() backward; optionally it keeps a tensor it made,
    or drops one made before it."""
    with StorageTracker() as tracker:
        w = torch.nn.Parameter(torch.zeros(8, 8))
        older = torch.ones(16)
        tracker.track(w)
        kept = []
        with tracker.recording() as rec:
            (w * torch.ones(8, 8)).sum().backward()
            if keep:
                kept.append(torch.ones(32))
            if free_older:
                del older
        return replay_module.FirstStep.of(rec, tracker, [w]), rec


def test_only_a_step_that_leaves_exactly_its_gradients_is_replayed():
    first, rec = _first_step()
    assert first is not None and [g.size for g in first.grads] == [(8, 8)]
    mallocs = [e for e in rec.events if isinstance(e, Malloc)]
    assert mallocs[-1].nbytes == 8 * 8 * 4  # the fp32 gradient, allocated last and kept
    assert _first_step(keep=True)[0] is None  # a tensor kept past the step: the steps could differ
    assert _first_step(free_older=True)[0] is None  # it freed what an earlier phase allocated
