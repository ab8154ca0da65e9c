"""The Trainer's FLOPs count of a step (`total_flos`), with the parameters counted once: transformers walks all of them
every step, a measurable cost of a tiny step. A LoRA run's parameters do not change, so the first step's figure per
token is kept and scaled by each step's tokens: transformers' formula, linear in tokens."""

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
