import json

import pytest

from tunelab.data.capitalization import english_words, make_capitalization_dataset, split_counts
from tunelab.data.splits import load_splits
from tunelab.errors import TunelabError


def test_capitalization_dataset_is_seeded_and_split(tmp_path):
    a = make_capitalization_dataset(6, 200, tmp_path / "a", 0.8, seed=3)
    b = make_capitalization_dataset(6, 200, tmp_path / "b", 0.8, seed=3)
    c = make_capitalization_dataset(6, 200, tmp_path / "c", 0.8, seed=4)
    assert a.name == "words_6L_80P_200.json"
    da, db, dc = (json.loads(p.read_text()) for p in (a, b, c))
    assert da == db and da["train"] != dc["train"]
    assert (len(da["train"]), len(da["validation"]), len(da["test"])) == (160, 20, 20)
    words = [e["input"] for s in ("train", "validation", "test") for e in da[s]]
    assert len(set(words)) == 200 and all(len(w) == 6 and w.islower() for w in words)
    assert all(e["output"] == e["input"].capitalize() for e in da["test"])
    assert da["meta"]["seed"] == 3


def test_too_many_words_is_a_clear_error(tmp_path):
    available = len(english_words(2))
    with pytest.raises(TunelabError, match=rf"only {available} distinct 2-letter words"):
        make_capitalization_dataset(2, available + 1, tmp_path)
    assert not list(tmp_path.iterdir())


def test_split_counts_never_empty():
    assert split_counts(10, 0.8) == (8, 1, 1)
    with pytest.raises(TunelabError, match="empty split"):
        from tunelab.data.capitalization import make_capitalization_dataset as m

        m(5, 3, "/tmp/never-written", 0.8)


@pytest.mark.parametrize(
    "data, field, words",
    [
        ({"train": [{"input": "a", "output": "A"}], "validation": [{"input": "b", "output": "B"}]}, "test", "missing"),
        ({"train": [], "validation": [1], "test": [1]}, "train", "non-empty"),
        ({"train": [{"input": "a"}], "validation": [1], "test": [1]}, "train[0]", "no 'output'"),
    ],
)
def test_load_splits_errors(tmp_path, data, field, words):
    p = tmp_path / "d.json"
    p.write_text(json.dumps(data))
    with pytest.raises(TunelabError) as exc:
        load_splits(p)
    assert f"{p}: {field}: " in str(exc.value) and words in str(exc.value)


def test_load_splits_bad_json(tmp_path):
    p = tmp_path / "d.json"
    p.write_text('{"train": [')
    with pytest.raises(TunelabError, match="not valid JSON"):
        load_splits(p)
