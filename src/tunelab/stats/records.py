"""The two records uncertainty is computed from and stored as: one sample's score and one interval; free of heavy
imports, since the ledger reads them on every ingest."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, model_serializer

CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0  # every bootstrap is seeded; the seed is recorded with its interval
BOOTSTRAP_RESAMPLES = 2000  # metrics computed for all resamples at once
ROW_RESAMPLES = 1000  # metrics computed one resample per call (ECE, AUC): fewer resamples, recorded


class SampleValue(BaseModel):
    """One test sample's score, kept so a metric's interval and paired differences come from the samples."""

    id: int | str
    value: float | None = None  # the first scorer's value as a number (correct 1, incorrect 0)
    target: str | float | None = None  # choice / numeric built-ins: what the metrics compare
    prediction: str | float | None = None
    probs: dict[str, float] | None = None  # choice: each option's probability
    # image samples only (left out of the JSON otherwise): the sample's image files, the expected and the model's
    # answer, which the report shows side by side
    images: list[str] | None = None
    expected: str | None = None
    answer: str | None = None

    @model_serializer(mode="wrap")
    def _without_empty_image_fields(self, handler: Any) -> Any:
        out = handler(self)
        for key in ("images", "expected", "answer"):
            if isinstance(out, dict) and out.get(key) is None:
                out.pop(key, None)
        return out


class Interval(BaseModel):
    """A 95 % confidence interval of one metric and how it was computed."""

    low: float
    high: float
    method: str  # wilson | bootstrap-bca | bootstrap-percentile
    confidence: float = CONFIDENCE
    seed: int | None = None  # bootstrap only
    resamples: int | None = None  # bootstrap only

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high
