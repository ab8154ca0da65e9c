"""The shapes task: a seeded image "model organism" for vision-language fine-tuning on a CPU.

Each example is a small PIL-drawn picture (white background, filled shapes) and a question whose answer is one
word or one number, known exactly from how the picture was drawn:

- colour: one shape of one of four colours; the answer is the colour's name (red, green, blue, yellow);
- count: one to three shapes of one colour; the answer is how many (1, 2, 3);
- position: one shape inside one quadrant; the answer names it (top-left, top-right, bottom-left, bottom-right).

Rows are in the chat format with content parts, the image part's path relative to the dataset file
({"type": "image", "image": "images/0001.png"}); every turn's content is a list of parts, so one arrow table
holds them. The file layout and the split rule are those of the capitalization task; the same command writes
the same bytes (images and JSON).
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from PIL import Image, ImageDraw

from tunelab.data.capitalization import split_counts, split_lists
from tunelab.errors import TunelabError
from tunelab.fsutil import atomic_write_json

TASKS = ("colour", "count", "position")
COLOURS: dict[str, tuple[int, int, int]] = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220),
                                             "yellow": (235, 200, 20)}
QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")
KINDS = ("circle", "square", "triangle")
QUESTIONS = {"colour": "What colour is the shape? Answer with one word.",
             "count": "How many shapes are in the picture? Answer with a number.",
             "position": "In which quadrant is the shape? Answer top-left, top-right, bottom-left or bottom-right."}
IMAGE_DIR = "images"
DEFAULT_SIZE = 56  # 56 x 56 = 4 x 4 patches of 14: a few image tokens, so the tiny VLM trains fast on a CPU


def dataset_filename(task: str, num_examples: int) -> str:
    return f"shapes_{task}_{num_examples}.json"


def _draw(draw, kind: str, box: tuple[int, int, int, int], fill: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    if kind == "circle":
        draw.ellipse(box, fill=fill)
    elif kind == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)


def _box_in(rng: random.Random, area: tuple[int, int, int, int], lo: int, hi: int) -> tuple[int, int, int, int]:
    """A square box of side lo..hi placed inside `area` (x0, y0, x1, y1)."""
    side = rng.randint(lo, min(hi, area[2] - area[0], area[3] - area[1]))
    x = rng.randint(area[0], area[2] - side)
    y = rng.randint(area[1], area[3] - side)
    return x, y, x + side, y + side


def draw_example(task: str, rng: random.Random, size: int):
    """(picture, answer) for one example of the task."""
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    kind = rng.choice(KINDS)
    if task == "colour":
        colour = rng.choice(sorted(COLOURS))
        _draw(draw, kind, _box_in(rng, (2, 2, size - 2, size - 2), size // 3, 3 * size // 4), COLOURS[colour])
        return image, colour
    if task == "position":
        q = rng.randrange(4)
        half = size // 2
        x0, y0 = (q % 2) * half, (q // 2) * half
        colour = rng.choice(sorted(COLOURS))
        _draw(draw, kind, _box_in(rng, (x0 + 2, y0 + 2, x0 + half - 2, y0 + half - 2), size // 6, size // 3),
              COLOURS[colour])
        return image, QUADRANTS[q]
    count = rng.randint(1, 3)  # count: shapes in distinct cells of a 3 x 3 grid, so they never overlap
    cell = size // 3
    colour = rng.choice(sorted(COLOURS))
    for c in rng.sample(range(9), count):
        x0, y0 = (c % 3) * cell, (c // 3) * cell
        _draw(draw, rng.choice(KINDS), _box_in(rng, (x0 + 1, y0 + 1, x0 + cell - 1, y0 + cell - 1),
                                             cell // 2, cell - 2), COLOURS[colour])
    return image, str(count)


def chat_row(image_path: str, question: str, answer: str) -> dict:
    """One chat row: the user turn holds the image part and the question, the assistant turn the answer."""
    return {"messages": [
        {"role": "user", "content": [{"type": "image", "image": image_path}, {"type": "text", "text": question}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]}


def make_shapes_dataset(task: str, num_examples: int, out_dir: str | Path, train_fraction: float = 0.8,
                        seed: int = 0, size: int = DEFAULT_SIZE) -> Path:
    """Draw `num_examples` pictures into out_dir/images/, write shapes_{task}_{N}.json beside them."""
    if task not in TASKS:
        raise TunelabError(f"unknown task {task!r}: use one of {', '.join(TASKS)}", field="--task")
    if not 0 < train_fraction < 1:
        raise TunelabError("must be between 0 and 1 (exclusive)", field="--train-fraction")
    if size < 28:
        raise TunelabError("must be at least 28 pixels", field="--size")
    n_train, n_val, n_test = split_counts(num_examples, train_fraction)
    if min(n_train, n_val, n_test) < 1:
        raise TunelabError(f"{num_examples} examples at train fraction {train_fraction} leave an empty split "
                           f"(train {n_train}, validation {n_val}, test {n_test}); use more", field="--num-examples")
    out = Path(out_dir)
    (out / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"shapes:{task}:{seed}")
    rows, answers = [], []
    width = max(4, len(str(num_examples)))
    for i in range(num_examples):
        image, answer = draw_example(task, rng, size)
        rel = f"{IMAGE_DIR}/{task}_{i + 1:0{width}d}.png"
        image.save(out / rel, format="PNG")
        rows.append(chat_row(rel, QUESTIONS[task], answer))
        answers.append(answer)
    data = {
        **split_lists(rows, n_train, n_val),
        "meta": {"task": f"shapes-{task}", "num_examples": num_examples, "train_fraction": train_fraction,
                 "seed": seed, "image_size": [size, size], "question": QUESTIONS[task],
                 "split_counts": {"train": n_train, "validation": n_val, "test": n_test},
                 "label_counts": dict(sorted(Counter(answers).items())),
                 "images": "PNG files under images/, paths relative to this file"},
    }
    return atomic_write_json(out / dataset_filename(task, num_examples), data)
