import hashlib
import json

import pytest

from tunelab.data.capitalization import english_words, make_capitalization_dataset, split_counts
from tunelab.data.rows import RowReader
from tunelab.data.splits import load_data, make_split
from tunelab.errors import TunelabError
from tunelab.spec import DatasetSpec, SplitFractions

QA = [{"question": f"What is {i} plus {i}?", "context": f"c{i}", "answer": 2 * i} for i in range(20)]
CHAT = [{"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": f"Say {w}"},
                      {"role": "assistant", "content": w}]} for w in ("alpha", "beta", "gamma", "delta", "eps")]


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
        make_capitalization_dataset(5, 3, "/tmp/never-written", 0.8)


def _write_all_formats(tmp_path):
    """The same 20 field rows in every format the datasets library reads; returns {kind: path}."""
    import datasets
    import pandas as pd

    paths = {"jsonl": tmp_path / "qa.jsonl", "json_rows": tmp_path / "qa.json", "csv": tmp_path / "qa.csv",
             "parquet": tmp_path / "qa.parquet", "saved": tmp_path / "qa_saved"}
    paths["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in QA))
    paths["json_rows"].write_text(json.dumps(QA, indent=2))
    pd.DataFrame(QA).to_csv(paths["csv"], index=False)
    pd.DataFrame(QA).to_parquet(paths["parquet"])
    datasets.Dataset.from_list(QA).save_to_disk(str(paths["saved"]))
    return paths


@pytest.mark.parametrize("kind", ["jsonl", "json_rows", "csv", "parquet", "saved"])
def test_every_format_gives_the_same_examples(tmp_path, kind):
    path = _write_all_formats(tmp_path)[kind]
    spec = DatasetSpec(name="qa", path=str(path), output_field="answer")
    data = load_data(spec, None)
    assert data.counts() == {"train": 20}
    reader = data.reader("Q: {question}\nContext: {context}", None)
    assert reader.format == "fields"
    ex = data.examples("train", reader)
    assert [e.prompt[-1].content for e in ex] == [f"Q: {r['question']}\nContext: {r['context']}" for r in QA]
    assert [e.answer for e in ex] == [str(r["answer"]) for r in QA]  # numbers become text, unchanged
    expected_sha = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    assert data.files[0].rows == 20 and (expected_sha is None or data.files[0].sha256 == expected_sha)


def test_split_lists_json_and_dataset_dict_dir(tmp_path):
    import datasets

    lists = {"train": QA[:12], "validation": QA[12:16], "test": QA[16:]}
    p = tmp_path / "lists.json"
    p.write_text(json.dumps(lists))
    assert load_data(DatasetSpec(name="a", path=str(p)), None).counts() == {"train": 12, "validation": 4, "test": 4}
    d = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(QA[:15]),
                          "dev": datasets.Dataset.from_list(QA[15:])}).save_to_disk(str(d))
    assert load_data(DatasetSpec(name="b", path=str(d)), None).counts() == {"train": 15, "validation": 5}


def test_one_file_per_split(tmp_path):
    for name, rows in (("tr.jsonl", CHAT[:3]), ("va.jsonl", CHAT[3:4]), ("te.jsonl", CHAT[4:])):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = DatasetSpec(name="c", train=str(tmp_path / "tr.jsonl"), validation=str(tmp_path / "va.jsonl"),
                       test=str(tmp_path / "te.jsonl"))
    data = load_data(spec, None)
    assert data.counts() == {"train": 3, "validation": 1, "test": 1}
    reader = data.reader(None, "ignored: rows bring a system turn")
    assert reader.format == "chat"
    (ex,) = data.examples("test", reader)
    assert [m.role for m in ex.messages] == ["system", "user", "assistant"] and ex.answer == "eps"
    assert ex.messages[0].content == "Be terse."


def test_split_by_spec_is_recorded_once_and_reused(tmp_path):
    src = tmp_path / "chat.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(50)]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = DatasetSpec(name="c", path=str(src), split=SplitFractions(validation=0.1, test=0.2, seed=7))
    exp = tmp_path / "exp"
    with pytest.raises(TunelabError, match="never recorded"):
        load_data(spec, exp)  # a job must not split on its own
    first = load_data(spec, exp, create_split=True)
    assert first.counts() == {"train": 35, "validation": 5, "test": 10}
    record = json.loads((exp / "data" / "c.split.json").read_text())
    # independent expectation: the three index sets partition 0..49 and match the rows served
    idx = record["indices"]
    assert sorted(idx["train"] + idx["validation"] + idx["test"]) == list(range(50))
    assert [r["messages"][0]["content"] for r in first.splits["test"]] == [f"q{i}" for i in idx["test"]]
    assert record["sources"][0]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    again = load_data(spec, exp)
    assert list(again.splits["test"]["messages"]) == list(first.splits["test"]["messages"])
    src.write_text(src.read_text() + json.dumps(rows[0]) + "\n")
    with pytest.raises(TunelabError, match="changed since its split was made"):
        load_data(spec, exp)


def test_make_split_is_seeded_and_never_empty():
    a = make_split(100, SplitFractions(validation=0.1, test=0.1, seed=1))
    assert a == make_split(100, SplitFractions(validation=0.1, test=0.1, seed=1))
    assert a != make_split(100, SplitFractions(validation=0.1, test=0.1, seed=2))
    assert (len(a["train"]), len(a["validation"]), len(a["test"])) == (80, 10, 10)
    assert len(make_split(5, SplitFractions(test=0.05))["test"]) == 1  # a fraction above 0 gives a row
    with pytest.raises(TunelabError, match="leave no training rows"):
        make_split(2, SplitFractions(validation=0.3, test=0.3))


def _jsonl(tmp_path, rows, name="d.jsonl"):
    p = tmp_path / name
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


@pytest.mark.parametrize("rows, template, words", [
    ([{"text": "hello"}], None, "neither 'messages'"),
    ([{"question": "q"}], "Q: {question}", r"no column\(s\) output"),
    ([{"messages": [{"role": "user", "content": "hi"}]}], None, "no assistant turn"),
    ([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                    {"role": "user", "content": "?"}]}], None, "must end with an assistant turn"),
    ([{"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "yo"}]}], None, "role"),
])
def test_bad_rows_name_the_file_and_row(tmp_path, rows, template, words):
    p = _jsonl(tmp_path, rows)
    data = load_data(DatasetSpec(name="d", path=str(p)), None)
    with pytest.raises(TunelabError, match=words) as exc:
        data.examples("train", data.reader(template, None))
    assert str(p) in str(exc.value)


def test_unreadable_files_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "a", "output": "A"}\n{"input": "b", "outp')
    with pytest.raises(TunelabError, match="cannot be read as JSON") as exc:
        load_data(DatasetSpec(name="d", path=str(bad)), None)
    assert str(bad) in str(exc.value)
    with pytest.raises(TunelabError, match="unknown file type '.txt'"):
        (tmp_path / "x.txt").write_text("hi")
        load_data(DatasetSpec(name="d", path=str(tmp_path / "x.txt")), None)
    with pytest.raises(TunelabError, match="dataset file not found"):
        load_data(DatasetSpec(name="d", path=str(tmp_path / "absent.csv")), None)
    obj = tmp_path / "obj.json"
    obj.write_text(json.dumps({"rows": [1, 2]}, indent=1))
    with pytest.raises(TunelabError, match="without split lists"):
        load_data(DatasetSpec(name="d", path=str(obj)), None)


def test_missing_split_says_how_to_get_one(tmp_path):
    data = load_data(DatasetSpec(name="d", path=str(_jsonl(tmp_path, QA))), None)
    with pytest.raises(TunelabError, match=r"no 'test' split .* split: \{test: 0.1\}"):
        data.require("test")


def test_prompt_completion_rows_and_template(tmp_path):
    rows = [{"prompt": "2+2", "completion": "4"}]
    data = load_data(DatasetSpec(name="d", path=str(_jsonl(tmp_path, rows))), None)
    (plain,) = data.examples("train", data.reader(None, None))
    assert [(m.role, m.content) for m in plain.messages] == [("user", "2+2"), ("assistant", "4")]
    (templated,) = data.examples("train", data.reader("Compute: {input}", "Be exact."))
    assert [m.content for m in templated.messages] == ["Be exact.", "Compute: 2+2", "4"]


def test_field_reader_fills_every_placeholder():
    reader = RowReader("fields", "{input} / {extra}", "word", "out")
    ex = reader.example({"word": "a", "extra": 3, "out": "A"}, "row 0")
    assert ex.prompt[-1].content == "a / 3" and ex.answer == "A"
