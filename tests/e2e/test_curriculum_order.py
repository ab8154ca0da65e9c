"""A real tiny training run fed in a curriculum order: what the model saw, decoded from the micro-batches it
trained on, is the dataset sorted by a field (computed here from the file, not by tunelab)."""

from __future__ import annotations

import json
import random

import pytest

from tunelab.fsutil import read_jsonl
from tunelab.scaffold.write import scaffold
from tunelab.train.job import train as train_job
from tunelab.train.loop_hooks import DEBUG_SEEN_ENV

pytestmark = pytest.mark.slow

WORDS = ["ox", "cat", "bird", "horse", "rabbit", "giraffe", "elephant", "crocodile", "yak", "mole", "zebra",
         "badger", "penguin", "kangaroo", "hedgehog", "owl", "lynx", "tiger", "walrus", "panther", "squirrel",
         "emu", "newt", "camel"]


def test_by_field_order_is_what_the_trainer_fed(tmp_path, write_spec, tiny_model, monkeypatch):
    assert not any(a != b and a in b for a in WORDS for b in WORDS)  # each decoded row names one word
    rng = random.Random(7)
    train = [{"input": w, "output": w.capitalize(), "difficulty": round(rng.random(), 4)} for w in WORDS]
    data = tmp_path / "animals.json"
    data.write_text(json.dumps({"train": train, "validation": train[:4], "test": train[:4]}))
    spec = write_spec(datasets=[{"name": "animals", "path": str(data)}], factors={"lora_rank": [4]},
                      controls=False, training={"epochs": 2, "batch_size": 4, "logging_steps": 3,
                                                "order": {"by_field": "difficulty"}})
    cfg = scaffold(spec).runs[0]
    seen_dir = tmp_path / "seen"
    seen_dir.mkdir()
    monkeypatch.setenv(DEBUG_SEEN_ENV, str(seen_dir))
    steps = train_job(cfg).steps

    expected = [WORDS[i] for i in sorted(range(len(WORDS)), key=lambda i: train[i]["difficulty"])]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    # the step-cost measurement after training runs extra steps (step > steps): not part of the epochs
    batches = sorted((b for b in read_jsonl(seen_dir / "seen.rank0.jsonl") if b["step"] <= steps),
                     key=lambda b: b["step"])
    fed = [next(w for w in WORDS if f"Capitalize: {w}" in tok.decode(row)) for b in batches for row in b["rows"]]
    assert fed == expected * 2  # both epochs, easiest first, nothing shuffled
    orders = read_jsonl(cfg.run_dir / "data_order.jsonl")
    assert [(o["epoch"], o["order"]) for o in orders] == [(0, "by_field:difficulty"), (1, "by_field:difficulty")]
    assert all([WORDS[i] for i in o["indices"]] == expected for o in orders)
