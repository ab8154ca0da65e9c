"""Images in conversations: reading image parts from rows, and turning a conversation with images into the
tokens and pixels a vision-language model takes, for training and evaluation alike.

Rows carry image parts ({"type": "image", "image": "images/0001.png"}, path relative to the dataset file)
beside text parts. The text side is `PromptFormat`'s as for any model (the chat template renders an image
part as <|vision_start|><|image_pad|><|vision_end|>); then each image's one <|image_pad|> becomes as many as
the image processor's patch grid gives it (grid t·h·w / merge², exactly what the model's vision tower will
emit), so the prompt of an evaluation is still the exact token prefix of the training example.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunelab.data.conversation import Example, Message
from tunelab.data.formatting import PromptFormat
from tunelab.errors import TunelabError
from tunelab.models.vlm import VisionProcessor


def parse_parts(parts: list, where: str, image_dir: str | None) -> tuple[str, tuple[str, ...]]:
    """(text, image paths) of a list of content parts; paths resolved against image_dir and checked to exist."""
    texts: list[str] = []
    images: list[str] = []
    for k, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image" and isinstance(part.get("image"), str):
            images.append(resolve_image(part["image"], image_dir, f"{where}, part {k}"))
        else:
            raise TunelabError(f"{where}, part {k}: a content part is {{'type': 'text', 'text': ...}} or "
                               f"{{'type': 'image', 'image': 'path'}}, not {part!r}")
    return "".join(texts), tuple(images)


def resolve_image(path: str, image_dir: str | None, where: str) -> str:
    """The image's absolute path (relative paths are relative to the dataset file); missing is an error."""
    p = Path(path)
    if not p.is_absolute() and image_dir is not None:
        p = Path(image_dir) / p
    if not p.is_file():
        raise TunelabError(f"{where}: image {path!r} not found (looked at {p})", file=p)
    return str(p.resolve())


def image_value(value: Any, image_dir: str | None, where: str) -> str:
    """A column's image as a path or data URI: a path string (relative to the dataset file), a datasets Image
    value ({'bytes', 'path'} undecoded, or a decoded PIL image)."""
    if isinstance(value, str):
        return value if value.startswith("data:") else resolve_image(value, image_dir, where)
    if isinstance(value, dict) and value.get("bytes"):
        return _as_uri(value["bytes"])
    if isinstance(value, dict) and isinstance(value.get("path"), str):
        return resolve_image(value["path"], image_dir, where)
    if hasattr(value, "save"):  # a PIL image (a datasets Image column, decoded)
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return _as_uri(buf.getvalue())
    raise TunelabError(f"{where}: an image is a path, or a datasets Image value, not {type(value).__name__}")


def _as_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def load_image(path: str, where: str = "") -> Any:
    """The picture as RGB; an unreadable file is an error naming it (and the row, when given)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(image_source(path)) as im:
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise TunelabError(f"{where + ': ' if where else ''}image cannot be read: {exc}", file=path) from None


def image_source(path: str) -> Any:
    """What PIL opens: the path, or a base64 data URI's bytes (an image column, or inspect-ai's encoding)."""
    if not path.startswith("data:"):
        return path
    return io.BytesIO(base64.b64decode(path.split(",", 1)[1]))


def example_images(messages: Sequence[Message]) -> list[str]:
    return [path for m in messages for path in m.images]


def check_readable(examples: Sequence[Example], where: Any) -> int:
    """Open every image of the examples (plan time, so a damaged file fails before training); the count.
    `where(i)` names example i in errors."""
    n = 0
    for i, e in enumerate(examples):
        for path in example_images(e.messages):
            load_image(path, where(i))
            n += 1
    return n


def image_pixels(proc: VisionProcessor, paths: Sequence[str]) -> tuple[Any, Any, list[int]]:
    """(pixel_values, image_grid_thw, image tokens per image) of these image files, by the model's processor."""
    out = proc.image_processor(images=[load_image(p) for p in paths], return_tensors="pt")
    grid = out["image_grid_thw"]
    merge = int(getattr(proc.image_processor, "merge_size", 1) or 1)
    return out["pixel_values"], grid, [int(g.prod()) // merge ** 2 for g in grid]


def expand_image_tokens(ids: list[int], mask: list[int], image_token_id: int, counts: Sequence[int]
                        ) -> tuple[list[int], list[int]]:
    """Each image token, in order, repeated as many times as its image has tokens (no loss on them)."""
    found = ids.count(image_token_id)
    if found != len(counts):
        raise TunelabError(f"the chat template wrote {found} image placeholder(s) for {len(counts)} image(s)")
    out_ids: list[int] = []
    out_mask: list[int] = []
    it = iter(counts)
    for t, m in zip(ids, mask):
        n = next(it) if t == image_token_id else 1
        out_ids += [t] * n
        out_mask += [0 if t == image_token_id else m] * n
    return out_ids, out_mask


class VisionPrompt(list):
    """An evaluation prompt: the token ids (it is that list, so batching and seeding treat it as any prompt),
    carrying the pixels of its images (None when it has none)."""

    def __init__(self, ids: list[int], pixel_values: Any = None, image_grid_thw: Any = None,
                 image_token_id: int | None = None):
        super().__init__(ids)
        self.pixel_values, self.image_grid_thw, self.image_token_id = pixel_values, image_grid_thw, image_token_id

    @property
    def ids(self) -> list[int]:
        return list(self)


def encode_vision_example(fmt: PromptFormat, example: Example, proc: VisionProcessor) -> dict[str, Any]:
    """Training's row: input_ids + completion_mask (PromptFormat's, image tokens expanded) and the pixels."""
    enc = fmt.encode_example(example, proc.tokenizer)
    paths = example_images(example.messages)
    if not paths:
        return {**enc, "pixel_values": [], "image_grid_thw": []}
    pixel_values, grid, counts = image_pixels(proc, paths)
    ids, mask = expand_image_tokens(enc["input_ids"], enc["completion_mask"], proc.image_token_id, counts)
    return {"input_ids": ids, "completion_mask": mask, "pixel_values": pixel_values.tolist(),
            "image_grid_thw": grid.tolist()}


def encode_vision_prompt(fmt: PromptFormat, messages: Sequence[Message], proc: VisionProcessor) -> VisionPrompt:
    """Evaluation's prompt: the same tokens as the training example's prefix, and the same pixels."""
    ids = fmt.encode_prompt(messages, proc.tokenizer)
    paths = example_images(messages)
    if not paths:
        return VisionPrompt(ids)
    pixel_values, grid, counts = image_pixels(proc, paths)
    ids, _ = expand_image_tokens(ids, [0] * len(ids), proc.image_token_id, counts)
    return VisionPrompt(ids, pixel_values, grid, proc.image_token_id)
