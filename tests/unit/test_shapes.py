"""`tunelab data shapes`: the answers are what the pixels show, and a seed writes the same bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tunelab.data.shapes import COLOURS, QUADRANTS, make_shapes_dataset
from tunelab.errors import TunelabError


def _rows(path: Path) -> list[tuple[Image.Image, str]]:
    data = json.loads(path.read_text())
    out = []
    for split in ("train", "validation", "test"):
        for row in data[split]:
            user, answer = row["messages"]
            image = Image.open(path.parent / user["content"][0]["image"]).convert("RGB")
            out.append((image, answer["content"][0]["text"]))
    return out


def _ink(image: Image.Image) -> list[tuple[int, int, tuple[int, int, int]]]:
    w, h = image.size
    px = image.load()
    return [(x, y, px[x, y]) for y in range(h) for x in range(w) if px[x, y] != (255, 255, 255)]


def test_colour_answer_is_the_colour_drawn(tmp_path):
    path = make_shapes_dataset("colour", 20, tmp_path, seed=3)
    for image, answer in _rows(path):
        ink = _ink(image)
        assert ink and {c for _, _, c in ink} == {COLOURS[answer]}  # no anti-aliasing: one colour of ink


def test_position_answer_is_the_quadrant_of_the_ink(tmp_path):
    path = make_shapes_dataset("position", 20, tmp_path, seed=1)
    seen = set()
    for image, answer in _rows(path):
        w, h = image.size
        ink = _ink(image)
        quadrants = {("top" if y < h // 2 else "bottom") + "-" + ("left" if x < w // 2 else "right") for x, y, _ in ink}
        assert quadrants == {answer}
        seen.add(answer)
    assert seen <= set(QUADRANTS) and len(seen) > 1


def test_count_answer_is_the_number_of_separate_shapes(tmp_path):
    path = make_shapes_dataset("count", 20, tmp_path, seed=2)
    for image, answer in _rows(path):
        ink = {(x, y) for x, y, _ in _ink(image)}
        parts = 0
        while ink:  # flood fill: connected blobs of ink (4-neighbourhood)
            stack = [ink.pop()]
            while stack:
                x, y = stack.pop()
                for n in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)):
                    if n in ink:
                        ink.remove(n)
                        stack.append(n)
            parts += 1
        assert parts == int(answer)


def test_same_seed_same_bytes_and_layout(tmp_path):
    a = make_shapes_dataset("colour", 10, tmp_path / "a", seed=7)
    b = make_shapes_dataset("colour", 10, tmp_path / "b", seed=7)
    assert a.read_bytes() == b.read_bytes()
    assert [p.read_bytes() for p in sorted((tmp_path / "a/images").iterdir())] == [
        p.read_bytes() for p in sorted((tmp_path / "b/images").iterdir())]
    data = json.loads(a.read_text())
    assert [len(data[s]) for s in ("train", "validation", "test")] == [8, 1, 1]


def test_unknown_task_names_the_option(tmp_path):
    with pytest.raises(TunelabError) as err:
        make_shapes_dataset("size", 10, tmp_path)
    assert err.value.field == "--task"
