"""Which loss the trainer computes: a mixin for the SFTTrainer subclass of loop_hooks.py (beside feeding.py's and
sharding.py's), so the choice between TRL's fused LM head and the model's own loss sits in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import Trainer

    _TrainerBase = Trainer  # the class this mixes into, for the type checker: super() calls resolve there
else:
    _TrainerBase = object


class PlainLossMixin(_TrainerBase):
    """TRL's fused LM head saves GPU memory on large vocabularies but costs time on a CPU (docs/benchmarks.md), so there
    the model computes its own loss from its logits (`plain_loss`): the same value."""

    plain_loss: bool = False  # the model's own loss, not TRL's fused LM head (trainer.plain_loss)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.plain_loss:
            from transformers import Trainer

            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
