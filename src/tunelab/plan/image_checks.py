"""What a vision-language run's images cost, per split, before any job: plan.md's image facts.

Per split of a run on a VLM: images per example, the pixel budget after the processor's resize (the run's
`training.min_pixels` / `max_pixels` over the model's processor), the image tokens per example, and the full
sequence length with them; counted with models/vision.py (transformers' smart_resize on each image's size,
read from the file's header). Truncation that would cut an image's tokens is an error: the vision tower would
emit more features than tokens are left for them, and the step fails; plan says so first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from tunelab.data.images import example_images, image_source
from tunelab.data.splits import load_data
from tunelab.errors import TunelabError
from tunelab.models.vision import image_tokens, read_geometry
from tunelab.rundir.config import RunConfig


@dataclass(frozen=True)
class SplitImages:
    """One split's image facts for one run."""

    split: str
    examples: int
    images_mean: float
    images_max: int
    pixels_max: int  # the largest image after resizing
    image_tokens_mean: float  # per example
    image_tokens_max: int
    longest_tokens: int  # the longest example, image tokens included
    max_seq_len: int


def image_size(path: str) -> tuple[int, int]:
    """(width, height) from the file's header."""
    with Image.open(image_source(path)) as im:
        return im.size


def image_facts(cfg: RunConfig, lengths: dict[str, tuple[tuple[int, int], ...]]) -> list[SplitImages]:
    """Per split: images and image tokens per example, resized pixels, the longest sequence (from `lengths`,
    which count image tokens). An image cut by max_seq_len is a TunelabError naming the run and row."""
    t = cfg.training
    assert t is not None
    geometry = read_geometry(cfg.model.path).with_pixels(t.min_pixels, t.max_pixels)
    data = load_data(cfg.dataset, cfg.experiment_dir)
    reader = data.reader(cfg.prompt, cfg.system_prompt)
    out = []
    for split, rows in lengths.items():
        counts, tokens, pixels = [], [], [0]
        for i, e in enumerate(data.examples(split, reader)):
            per = [image_tokens(*image_size(p), geometry) for p in example_images(e.messages)]
            counts.append(len(per))
            tokens.append(sum(x.tokens for x in per))
            pixels += [x.resized_pixels for x in per]
            # images sit in the prompt: a prompt longer than max_seq_len cuts into them (or what follows them)
            if per and i < len(rows) and rows[i][1] > t.max_seq_len:
                raise TunelabError(
                    f"run {cfg.name}: {cfg.dataset.name} {split} row {i} is {rows[i][0]} tokens with {tokens[-1]} image "
                    f"tokens, and max_seq_len {t.max_seq_len} would cut its image; raise max_seq_len or lower "
                    "max_pixels", field="training.max_seq_len")
        if counts:
            out.append(SplitImages(split, len(counts), sum(counts) / len(counts), max(counts), max(pixels),
                                   sum(tokens) / len(tokens), max(tokens), max(n for n, _ in rows) if rows else 0,
                                   t.max_seq_len))
    return out


def image_token_delta(paths: list[str], model_dir: str | Path, min_pixels: int | None, max_pixels: int | None) -> int:
    """Tokens the images add beyond the one placeholder token each that the chat template writes."""
    geometry = read_geometry(model_dir).with_pixels(min_pixels, max_pixels)
    return sum(image_tokens(*image_size(p), geometry).tokens - 1 for p in paths)


def run_image_facts(cfg: RunConfig, lengths: Callable[[RunConfig], dict[str, tuple[tuple[int, int], ...]]]
                    ) -> dict[str, list[SplitImages]]:
    """{run (or 'run / stage'): facts}; a staged run's per stage, on each stage's dataset and settings."""
    if cfg.stages:
        return {f"{cfg.name} / {s.name}": image_facts(cfg.stage_config(i), lengths(cfg.stage_config(i)))
                for i, s in enumerate(cfg.stages)}
    return {cfg.name: image_facts(cfg, lengths(cfg))}


def image_lines(facts: dict[str, list[SplitImages]]) -> list[str]:
    """plan.md's section."""
    if not facts:
        return []
    lines = ["## Images", "", "Image tokens are counted as the model's processor resizes each picture "
             "(training.min_pixels / max_pixels over the processor's); the sequence length includes them.", "",
             "| Run | Split | Examples | Images / example (mean, max) | Largest image after resize (pixels) | "
             "Image tokens / example (mean, max) | Longest sequence (tokens) | max_seq_len |",
             "|---|---|---|---|---|---|---|---|"]
    for run, rows in facts.items():
        for f in rows:
            lines.append(f"| {run} | {f.split} | {f.examples} | {f.images_mean:.2f}, {f.images_max} | {f.pixels_max:,} | "
                         f"{f.image_tokens_mean:.1f}, {f.image_tokens_max} | {f.longest_tokens} | {f.max_seq_len} |")
    return lines + [""]
