"""The spec's `datasets:` entries: where a lab's data lives, how its rows read (detected from the columns unless
`format:` forces it), how it is split."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tunelab.spec.base import Slug, _Strict

RowFormat = Literal["auto", "chat", "prompt_completion", "fields"]
SPLIT_NAMES = ("train", "validation", "test")


class SplitFractions(_Strict):
    """Carve validation/test out of the training rows, seeded; written once into the experiment dir."""

    validation: float = Field(0.0, ge=0, lt=1, description="Share of the rows held out for validation.")
    test: float = Field(0.0, ge=0, lt=1, description="Share of the rows held out for testing.")
    seed: int = Field(0, description="Shuffle seed (recorded with the split).")

    @model_validator(mode="after")
    def _leaves_training_rows(self) -> SplitFractions:
        if self.validation + self.test >= 1:
            raise ValueError("validation + test must leave rows for training (sum below 1)")
        if self.validation == 0 and self.test == 0:
            raise ValueError("give a validation and/or test fraction above 0")
        return self


class DatasetSpec(_Strict):
    """One dataset: a file or directory with splits, or one file per split, in any format `datasets` reads."""

    name: Slug = Field(description="Short name used in run names and to refer to it from eval tasks.")
    path: str | None = Field(
        None, description="One file or directory: JSON with train/validation/test lists, JSON/JSONL rows, CSV, "
        "Parquet, or a datasets save_to_disk directory. Relative to the spec file.")
    train: str | None = Field(None, description="One file per split: the training rows.")
    validation: str | None = Field(None, description="One file per split: the validation rows.")
    test: str | None = Field(None, description="One file per split: the test rows.")
    format: RowFormat = Field(
        "auto", description="Row format: chat (messages), prompt_completion (prompt/completion), fields (the "
        "prompt template's placeholders name columns; output_field is the answer); auto detects it.")
    input_field: str = Field("input", description="The column that the prompt's '{input}' placeholder reads.")
    output_field: str = Field("output", description="fields format: the column holding the answer.")
    image_field: str | None = Field(
        None, description="fields format: the column holding each row's image (a path relative to the dataset "
        "file, or a datasets Image column), shown before the prompt's text (vision-language models).")
    split: SplitFractions | None = Field(
        None, description="Split the rows by the spec, e.g. {validation: 0.1, test: 0.1, seed: 0}.")
    eval_only: bool = Field(False, description="Only evaluated on (by eval tasks), never trained on.")

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        per_split = [s for s in SPLIT_NAMES if getattr(self, s)]
        if self.path and per_split:
            raise ValueError(f"give either path or per-split files ({', '.join(per_split)}), not both")
        if not self.path and not per_split:
            raise ValueError("needs path (one file or directory) or per-split files (train:, validation:, test:)")
        if per_split and not self.train and not self.eval_only:
            raise ValueError("per-split files need train: (or eval_only: true)")
        return self

    def split_files(self) -> dict[str, str]:
        """{split: file} for per-split files; {'*': path} for one source holding (or split into) all."""
        if self.path:
            return {"*": self.path}
        return {s: getattr(self, s) for s in SPLIT_NAMES if getattr(self, s)}
