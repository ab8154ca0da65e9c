"""The README promises packed examples are isolated: a BFD-packed, padding-free batch (position_ids
restarting at 0 per example, no attention mask) must give each example the loss it has alone. Checked
with the batch tunelab's trainer really builds and the attention implementation it really loads."""

from __future__ import annotations

import pytest

from tunelab.scaffold.write import scaffold

pytestmark = pytest.mark.slow

# fp32 on CPU: packed and alone differ only by summation order in the matmuls (observed ~1e-6)
ATOL = 1e-4


def _example_losses(logits, labels, starts):
    """Mean next-token cross-entropy of each example (its completion tokens) in one flat sequence."""
    import torch.nn.functional as F

    losses = []
    for a, b in zip(starts, starts[1:]):
        losses.append(F.cross_entropy(logits[a:b - 1].float(), labels[a + 1:b], ignore_index=-100))
    return losses


@pytest.mark.parametrize("forced", [None, "eager"], ids=["as-loaded", "eager"])
def test_packed_batch_loss_equals_examples_run_apart(write_spec, forced):
    """`as-loaded` is the implementation tunelab's trainer gets for a packed run (tunelab_varlen)."""
    import torch

    from tunelab.train.trainer import build_trainer

    spec = write_spec(factors={"lora_rank": [8]}, controls=False,
                      training={"packing": True, "max_seq_len": 128, "batch_size": 2})
    trainer = build_trainer(scaffold(spec).runs[0])[0]
    model = trainer.model.eval()
    if forced:
        model.get_base_model().set_attn_implementation(forced)
    attn = model.get_base_model().config._attn_implementation
    assert forced or attn == "tunelab_varlen"  # what `attention: auto` loads for a packed run
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1  # padding-free, as trained
    pos = batch["position_ids"][0]
    starts = (pos == 0).nonzero().flatten().tolist() + [pos.numel()]
    assert len(starts) - 1 >= 6, "the batch should pack several examples"
    ids, labels = batch["input_ids"], batch["labels"][0]
    with torch.no_grad():
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        packed = _example_losses(model(**inputs, use_cache=False).logits[0], labels, starts)
        apart = [_example_losses(model(input_ids=ids[:, a:b], use_cache=False).logits[0], labels[a:b], [0, b - a])[0]
                 for a, b in zip(starts, starts[1:])]
        # the same flat sequence without position restarts attends across examples: the check is sharp
        leaky = _example_losses(model(input_ids=ids, use_cache=False).logits[0], labels, starts)
    diff = max(abs(p - q).item() for p, q in zip(packed, apart))
    leak = max(abs(p - q).item() for p, q in zip(leaky, apart))
    print(f"attention {attn}: packed vs apart max |Δloss| {diff:.2e}, unisolated {leak:.2e}")
    assert diff <= ATOL, f"{attn}: packed examples are not isolated (max |Δloss| {diff:.2e} > {ATOL})"
    assert leak > 100 * ATOL, f"{attn}: the check cannot tell isolated from leaky attention ({leak:.2e})"
