"""What the job does differently for a vision-language model: the model class, the processor, the examples with their
pixels, and their collator; the rest is the text path's.

Examples are built by `data.images.encode_vision_example`, as evaluation's prompts are, so TRL's chat templating never
runs. LoRA goes on the language model's linear layers unless `lora_target_modules` names others. Packing image rows is
refused: TRL's padding-free collator does not carry per-image boundaries and M-RoPE positions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunelab.data.images import encode_vision_example
from tunelab.errors import TunelabError
from tunelab.models.vlm import VisionProcessor, load_vision_processor, load_vlm
from tunelab.rundir.config import RunConfig


@dataclass
class VisionCollator:
    """Right-pads ids and labels, stacks every image's patches and grids, marks image tokens (for M-RoPE)."""

    pad_id: int
    image_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(features), width), -100, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.tensor(f["input_ids"], dtype=torch.long)
            labels[i, :n] = torch.tensor(f["labels"], dtype=torch.long)
            mask[i, :n] = 1
        batch = {"input_ids": ids, "labels": labels, "attention_mask": mask,
                 "mm_token_type_ids": (ids == self.image_token_id).long()}
        pixels = [torch.tensor(f["pixel_values"], dtype=torch.float32) for f in features if f.get("pixel_values")]
        if pixels:
            batch["pixel_values"] = torch.cat(pixels)
            batch["image_grid_thw"] = torch.cat([torch.tensor(f["image_grid_thw"], dtype=torch.long)
                                                 for f in features if f.get("image_grid_thw")])
        return batch


@dataclass
class VisionParts:
    """A VLM run's processor and how it loads, encodes and batches."""

    processor: VisionProcessor

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    def load_model(self, path: str, **kwargs: Any) -> Any:
        return load_vlm(path, **kwargs)

    def collator(self) -> VisionCollator:
        tok = self.processor.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return VisionCollator(int(pad), self.processor.image_token_id)

    def datasets(self, cfg: RunConfig) -> tuple[Any, Any | None]:
        """Train (and validation) rows: tokens, completion mask, pixels; image tokens never cut."""
        from datasets import Dataset

        from tunelab.data.formatting import prompt_format_of
        from tunelab.data.splits import load_data

        t = cfg.training
        assert t is not None
        if t.packing:
            raise TunelabError("packing image rows is not supported: a packed row would need each image's "
                               "vision-tower boundaries and M-RoPE positions per example; set packing: false",
                               field="training.packing")
        data = load_data(cfg.dataset, cfg.experiment_dir)
        reader = data.reader(cfg.prompt, cfg.system_prompt)
        fmt = prompt_format_of(cfg)

        def encode(split: str) -> Any:
            rows = []
            for i, e in enumerate(data.examples(split, reader)):
                row = encode_vision_example(fmt, e, self.processor)
                check_image_tokens_fit(row["input_ids"], self.processor.image_token_id, t.max_seq_len,
                                       f"{cfg.dataset.name} {split} row {i}")
                rows.append(row)
            return Dataset.from_list(rows)

        val = encode("validation") if t.validation_every_steps else None
        return encode("train"), val

    def configure(self, args: Any) -> Any:
        """SFTConfig for image rows: keep the pixel columns (TRL keeps only input_ids/labels otherwise)."""
        args.remove_unused_columns = False
        return args


def check_image_tokens_fit(ids: list[int], image_token_id: int, max_len: int, where: str) -> None:
    """Truncation at max_len must not cut an image's tokens (the vision tower would emit more than remain)."""
    if len(ids) > max_len and image_token_id in ids[max_len:]:
        raise TunelabError(f"{where}: {len(ids)} tokens with its image tokens beyond max_seq_len {max_len}; "
                           "truncation would cut the image: raise max_seq_len or lower max_pixels",
                           field="training.max_seq_len")


def vision_parts(cfg: RunConfig) -> VisionParts:
    t = cfg.training
    assert t is not None
    return VisionParts(load_vision_processor(cfg.model.path, t.min_pixels, t.max_pixels))
