"""The Trainer's FLOPs count of a step (its `total_flos`), with the model's parameters counted once.

Why: transformers' `Trainer.floating_point_ops` counts the model's non-embedding parameters at every optimizer
step by walking all of them (py-spy: ~0.9 ms a step, 5 % of the demo's tiny 2 × 128 step at one thread, 1.5 % of
the peers' tiny job). A LoRA run's parameters do not change while it trains, so the first step's figure per input
token is kept and multiplied by each later step's tokens: the formula stays transformers' own, linear in tokens.
"""

from __future__ import annotations

from typing import Any


class CountedFlopsMixin:
    """floating_point_ops from the first step's count per input token (Trainer mixin)."""

    _flops_per_token: float | None = None

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        main = getattr(getattr(self, "model", None), "main_input_name", "input_ids")
        tokens = inputs[main].numel() if hasattr(inputs.get(main), "numel") else 0
        if not tokens:
            return super().floating_point_ops(inputs)  # type: ignore[misc]
        if self._flops_per_token is None:
            self._flops_per_token = super().floating_point_ops(inputs) / tokens  # type: ignore[misc]
        return round(self._flops_per_token * tokens)
