"""plan on image rows (issue 31): plan.md's image facts (counted by hand, and against the real image processor's
output through training's encoder), and a missing, unreadable or cut image refused before any job."""

from __future__ import annotations

import re

import pytest
import yaml

from tunelab.data.shapes import make_shapes_dataset
from tunelab.errors import TunelabError
from tunelab.models.tiny_vl import build_tiny_vl
from tunelab.plan.planner import make_plan


@pytest.fixture(scope="module")
def vl_model(tmp_path_factory):
    return build_tiny_vl(tmp_path_factory.mktemp("vl") / "model", arch="qwen2_5_vl")


def _spec(tmp_path, model, **training):
    data = make_shapes_dataset("colour", 10, tmp_path / "data", seed=0)
    spec = {"name": "v", "models": [{"name": "tvl", "path": str(model)}],
            "datasets": [{"name": "colour", "path": str(data)}],
            "training": {"epochs": 1, "batch_size": 4, "max_seq_len": 160, **training}}
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, data


def test_plan_md_reports_image_tokens_and_lengths(tmp_path, vl_model):
    from tunelab.data.formatting import PromptFormat
    from tunelab.data.images import encode_vision_example
    from tunelab.data.splits import load_data
    from tunelab.models.vlm import load_vision_processor
    from tunelab.plan.markdown import render_plan_md

    path, _ = _spec(tmp_path, vl_model)
    plan = make_plan(path)
    [facts] = [f for f in plan.images["tvl"] if f.split == "train"]
    # 56x56 pictures at Qwen2.5-VL's factor 28 stay 56x56 = 3136 pixels: a 4x4 patch grid, merged 2x2 -> 4 tokens
    assert (facts.examples, facts.images_max, facts.pixels_max, facts.image_tokens_max) == (8, 1, 3136, 4)
    # the longest sequence is what training's encoder (the real image processor's grid) builds
    proc = load_vision_processor(vl_model)
    data = load_data(plan.runs[0].dataset, tmp_path)
    examples = data.examples("train", data.reader(None, None))
    assert facts.longest_tokens == max(len(encode_vision_example(PromptFormat(), e, proc)["input_ids"])
                                       for e in examples)
    text = render_plan_md(plan)
    assert re.search(r"\| tvl \| train \| 8 \| 1\.00, 1 \| 3,136 \| 4\.0, 4 \| \d+ \| 160 \|", text)


def test_max_pixels_changes_the_tokens(tmp_path, vl_model):
    path, _ = _spec(tmp_path, vl_model, min_pixels=112 * 112, max_pixels=112 * 112)
    [facts] = [f for f in make_plan(path).images["tvl"] if f.split == "train"]
    # 56x56 scaled up to the 12544-pixel minimum: 112x112 -> an 8x8 grid -> 16 tokens
    assert (facts.pixels_max, facts.image_tokens_max) == (12544, 16)


def test_missing_image_names_row_and_path(tmp_path, vl_model):
    path, data = _spec(tmp_path, vl_model)
    victim = sorted((data.parent / "images").iterdir())[2]
    victim.unlink()
    with pytest.raises(TunelabError) as err:
        make_plan(path, estimates=False)
    assert "train row 2" in str(err.value) and victim.name in str(err.value)


def test_unreadable_image_names_row_and_file(tmp_path, vl_model):
    path, data = _spec(tmp_path, vl_model)
    victim = sorted((data.parent / "images").iterdir())[9]  # the test row
    victim.write_bytes(b"not a png")
    with pytest.raises(TunelabError) as err:
        make_plan(path, estimates=False)
    assert "test row 0" in str(err.value) and f"{victim}" in str(err.value) and "cannot be read" in str(err.value)


def test_max_seq_len_cutting_the_image_is_an_error(tmp_path, vl_model):
    path, _ = _spec(tmp_path, vl_model, max_seq_len=20)  # the system prompt alone is longer
    with pytest.raises(TunelabError) as err:
        make_plan(path)
    assert err.value.field == "training.max_seq_len" and "image" in str(err.value)


def test_a_curriculum_of_image_tasks_reports_each_stage(tmp_path, vl_model):
    colour = make_shapes_dataset("colour", 10, tmp_path / "data", seed=0)
    position = make_shapes_dataset("position", 10, tmp_path / "data", seed=0)
    spec = {"name": "c", "models": [{"name": "tvl", "path": str(vl_model)}],
            "datasets": [{"name": "colour", "path": str(colour)}, {"name": "position", "path": str(position)}],
            "training": {"epochs": 1, "batch_size": 4, "max_seq_len": 200},
            "stages": [{"name": "first", "dataset": "colour"},
                       {"name": "then", "dataset": "position", "max_pixels": 112 * 112, "min_pixels": 112 * 112}]}
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(spec))
    images = make_plan(path).images
    by_stage = {run: {f.split: f.image_tokens_max for f in rows} for run, rows in images.items()}
    # each stage on its own dataset and pixel budget: 56x56 -> 4 tokens; scaled up to 112x112 -> 16 tokens
    assert by_stage == {"tvl / first": {"train": 4, "validation": 4, "test": 4},
                        "tvl / then": {"train": 16, "validation": 16, "test": 16}}


def test_image_field_beside_the_fields_format(tmp_path, vl_model):
    """image_field: a column of paths (JSON rows) or a datasets Image column (save_to_disk) feeds the image."""
    import json

    import datasets

    from tunelab.data.formatting import PromptFormat
    from tunelab.data.images import encode_vision_example
    from tunelab.data.splits import load_data
    from tunelab.models.vlm import load_vision_processor
    from tunelab.spec import DatasetSpec

    src = json.loads(make_shapes_dataset("colour", 10, tmp_path / "shapes", seed=0).read_text())
    rows = {split: [{"question": r["messages"][0]["content"][1]["text"], "picture": r["messages"][0]["content"][0]["image"],
                     "colour": r["messages"][1]["content"][0]["text"]} for r in src[split]]
            for split in ("train", "validation", "test")}
    (tmp_path / "shapes" / "rows.json").write_text(json.dumps(rows))
    table = datasets.Dataset.from_dict({"question": [r["question"] for r in rows["train"]],
                                        "picture": [str(tmp_path / "shapes" / r["picture"]) for r in rows["train"]],
                                        "colour": [r["colour"] for r in rows["train"]]}).cast_column("picture",
                                                                                                    datasets.Image())
    table.save_to_disk(str(tmp_path / "saved"))
    proc = load_vision_processor(vl_model)
    pad = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    pixels = []
    for path in (tmp_path / "shapes" / "rows.json", tmp_path / "saved"):
        spec = DatasetSpec(name="d", path=str(path), format="fields", output_field="colour", image_field="picture")
        data = load_data(spec, None)
        [first, *_] = data.examples("train", data.reader("{question}", None))
        assert len(first.messages[0].images) == 1 and first.answer == rows["train"][0]["colour"]
        enc = encode_vision_example(PromptFormat(), first, proc)
        assert enc["input_ids"].count(pad) == 4
        pixels.append(enc["pixel_values"])
    assert pixels[0] == pixels[1]  # the path and the Image column (PNG bytes) give the model the same pixels


def test_a_vision_language_run_on_a_cpu_is_priced_by_a_timed_matmul_as_a_model(tmp_path, vl_model, monkeypatch):
    """A VLM's step is not timed by the plan (forecast/cpuspeed.py): a matrix product at its hidden size is, and
    training is priced at an assumed share of it — kind `model`, with that kind's wider assumed width, never the
    `timed` of a real step's timing. A fresh history: a row of another model on this CPU would carry over instead."""
    from tunelab.catalog import resolve_architecture

    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))

    path, _ = _spec(tmp_path, vl_model)
    [est] = make_plan(path).estimates.values()
    hidden = resolve_architecture(str(vl_model)).hidden
    assert est.time_kind == "model", est.time_source
    assert est.time_source.startswith(f"model: a {hidden}² matrix product timed here ran at ")
    assert est.time_range is not None and "model: width σ 0.80 assumed" in est.time_range.basis
