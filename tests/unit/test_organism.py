"""tunelab data organism: synthetic sequences labelled by a known rule (labels recomputed here, independently)."""

import json
from collections import Counter

import pytest
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.data.organism import make_organism_dataset
from tunelab.errors import TunelabError

runner = CliRunner()
SPLITS = ("train", "validation", "test")
SYMBOLS = {"bits": set("01"), "digits": set("0123456789"), "letters": set("abcdefghijklmnopqrstuvwxyz")}


def examples(data):
    return [ex for split in SPLITS for ex in data[split]]


def expected(rule, alphabet, text, n=None, constant=None):
    """The label, from the input string alone."""
    syms = text.split(" ")
    if rule == "parity":
        if alphabet == "bits":
            return str(text.count("1") % 2)
        if alphabet == "digits":
            return str(sum(map(int, syms)) % 2)
        return str(sum(c in "aeiou" for c in text) % 2)
    if rule == "majority":
        counts = Counter(syms)
        return sorted(counts, key=lambda s: (-counts[s], s))[0]
    if rule == "first":
        return syms[0]
    if rule == "last":
        return syms[-1]
    if rule == "nth":
        return syms[n]
    if rule == "length":
        return str(len(syms))
    if rule == "constant":
        return constant
    raise AssertionError(rule)


def load(path):
    return json.loads(path.read_text())


@pytest.mark.parametrize("alphabet", ["bits", "digits", "letters"])
@pytest.mark.parametrize("rule", ["parity", "majority", "first", "last", "nth", "length", "constant"])
def test_every_rule_labels_every_example(tmp_path, rule, alphabet):
    kw = {"n": 3} if rule == "nth" else {"constant": "yes"} if rule == "constant" else {}
    path = make_organism_dataset(rule, alphabet, tmp_path, 200, min_length=4, max_length=9, seed=3, **kw)
    data = load(path)
    rows = examples(data)
    assert len(rows) == 200
    for ex in rows:
        syms = ex["input"].split(" ")
        assert 4 <= len(syms) <= 9 and set(syms) <= SYMBOLS[alphabet] and all(len(s) == 1 for s in syms)
        assert ex["output"] == expected(rule, alphabet, ex["input"], **kw), ex
    assert data["meta"]["rule"] == rule and data["meta"]["alphabet"] == alphabet and data["meta"]["seed"] == 3


def test_labels_are_not_degenerate(tmp_path):
    """Guards the recomputation above against agreeing by accident (e.g. every label '0')."""
    for rule, alphabet in [("parity", "bits"), ("parity", "digits"), ("parity", "letters"), ("majority", "bits")]:
        data = load(make_organism_dataset(rule, alphabet, tmp_path, 300, length=9, seed=0))
        counts = Counter(ex["output"] for ex in examples(data))
        assert set(counts) == {"0", "1"} and min(counts.values()) > 60, (rule, alphabet, counts)
        assert data["meta"]["label_counts"] == dict(sorted(counts.items()))
    ties = load(make_organism_dataset("majority", "bits", tmp_path, 16, length=4, seed=0))
    tied = [ex for ex in examples(ties) if ex["input"].count("1") == 2]
    assert len(tied) == 6 and all(ex["output"] == "0" for ex in tied)  # a 2-2 tie goes to the smaller symbol


def test_coin_is_independent_of_the_input_and_seeded(tmp_path):
    path = make_organism_dataset("coin", "bits", tmp_path, 2000, length=12, p=0.3, seed=5)
    assert path.name == "organism_coin0.3_bits_12_2000.json"
    data = load(path)
    labels = [ex["output"] for ex in examples(data)]
    assert set(labels) == {"0", "1"} and 0.25 < labels.count("1") / len(labels) < 0.35
    assert data["meta"]["p"] == 0.3
    # the inputs are those of every other rule with the same seed: the label is the only thing that changes
    parity = load(make_organism_dataset("parity", "bits", tmp_path, 2000, length=12, seed=5))
    assert [ex["input"] for ex in examples(parity)] == [ex["input"] for ex in examples(data)]
    agree = sum(a["output"] == b["output"] for a, b in zip(examples(parity), examples(data)))
    assert 0.4 < agree / 2000 < 0.6  # unrelated to the input's parity
    for p, label in ((0.0, "0"), (1.0, "1")):
        edge = load(make_organism_dataset("coin", "digits", tmp_path, 50, length=3, p=p, seed=1))
        assert {ex["output"] for ex in examples(edge)} == {label}
    default = load(make_organism_dataset("coin", "bits", tmp_path, 50, length=8, seed=1))
    assert default["meta"]["p"] == 0.5


def test_same_seed_same_bytes_other_seed_other_file(tmp_path):
    args = ("majority", "digits")
    a = make_organism_dataset(*args, tmp_path / "a", 300, length=6, seed=7).read_bytes()
    b = make_organism_dataset(*args, tmp_path / "b", 300, length=6, seed=7).read_bytes()
    c = make_organism_dataset(*args, tmp_path / "c", 300, length=6, seed=8).read_bytes()
    assert a == b and a != c
    assert load(tmp_path / "c" / "organism_majority_digits_6_300.json")["meta"]["seed"] == 8


def test_inputs_are_distinct_even_when_the_space_is_exhausted(tmp_path):
    data = load(make_organism_dataset("parity", "bits", tmp_path, 64, length=6, seed=0))  # all 2**6 sequences
    inputs = [ex["input"] for ex in examples(data)]
    assert len(set(inputs)) == 64
    var = load(make_organism_dataset("length", "bits", tmp_path, 14, min_length=1, max_length=3, seed=0))
    assert sorted(ex["input"] for ex in examples(var)) == sorted(
        " ".join(f"{i:0{k}b}") for k in (1, 2, 3) for i in range(2 ** k))
    for length in (12, 20):  # 26**12 fits random.sample's range, 26**20 does not
        big = load(make_organism_dataset("first", "letters", tmp_path, 3000, length=length, seed=0))
        assert len({ex["input"] for ex in examples(big)}) == 3000


def test_split_sizes_and_meta(tmp_path):
    path = make_organism_dataset("nth", "letters", tmp_path, 101, min_length=3, max_length=5, n=2,
                                 train_fraction=0.7, seed=2)
    assert path.name == "organism_nth2_letters_3-5_101.json"
    data = load(path)
    assert [len(data[s]) for s in SPLITS] == [71, 15, 15]
    meta = data["meta"]
    assert meta["split_counts"] == {"train": 71, "validation": 15, "test": 15}
    for key, value in {"task": "organism", "rule": "nth", "alphabet": "letters", "length": None, "min_length": 3,
                       "max_length": 5, "n": 2, "p": None, "constant": None, "num_examples": 101,
                       "train_fraction": 0.7, "seed": 2}.items():
        assert meta[key] == value, key
    assert "vowels" in load(make_organism_dataset("parity", "letters", tmp_path, 10, length=3))["meta"][
        "rule_description"]


@pytest.mark.parametrize("kwargs, field, message", [
    ({"rule": "nth", "length": 4, "n": 4}, "--n", "index 4 does not exist in sequences of length 4"),
    ({"rule": "nth", "min_length": 2, "max_length": 8, "n": 2}, "--n", "index 2 does not exist"),
    ({"rule": "nth", "length": 4}, "--n", "needs the 0-based index"),
    ({"rule": "nth", "length": 4, "n": -1}, "--n", "at least 0"),
    ({"rule": "first", "length": 4, "n": 1}, "--n", "only by --rule nth"),
    ({"rule": "coin", "length": 4, "p": 1.5}, "--p", "0 <= p <= 1"),
    ({"rule": "coin", "length": 4, "p": -0.1}, "--p", "0 <= p <= 1"),
    ({"rule": "parity", "length": 4, "p": 0.5}, "--p", "only by --rule coin"),
    ({"rule": "constant", "length": 4}, "--constant", "needs a non-empty --constant"),
    ({"rule": "last", "length": 4, "constant": "x"}, "--constant", "only by --rule constant"),
    ({"rule": "parity"}, "--length", "give the sequence length"),
    ({"rule": "parity", "length": 4, "min_length": 2}, "--length", "not both"),
    ({"rule": "parity", "min_length": 2}, "--max-length", "needs both"),
    ({"rule": "parity", "min_length": 5, "max_length": 3}, "--max-length", "at least --min-length"),
    ({"rule": "parity", "length": 0}, "--length", "at least 1"),
    ({"rule": "sum", "length": 4}, "--rule", "unknown rule 'sum'"),
    ({"rule": "parity", "alphabet": "hex", "length": 4}, "--alphabet", "unknown alphabet 'hex'"),
    ({"rule": "parity", "length": 4, "num_examples": 17}, "--num-examples", "only 16 distinct bits sequences"),
    ({"rule": "parity", "min_length": 1, "max_length": 2, "num_examples": 7, "train_fraction": 0.5}, "--num-examples",
     "only 6 distinct bits sequences of lengths 1-2"),
    ({"rule": "parity", "length": 4, "num_examples": 2}, "--num-examples", "leave an empty split"),
    ({"rule": "parity", "length": 4, "train_fraction": 1.0}, "--train-fraction", "between 0 and 1"),
])
def test_bad_combinations_are_clear_errors(tmp_path, kwargs, field, message):
    kwargs = {"alphabet": "bits", "num_examples": 10, **kwargs}
    rule, alphabet, num = kwargs.pop("rule"), kwargs.pop("alphabet"), kwargs.pop("num_examples")
    with pytest.raises(TunelabError) as err:
        make_organism_dataset(rule, alphabet, tmp_path, num, **kwargs)
    assert err.value.field == field and message in err.value.message, str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_cli(tmp_path):
    res = runner.invoke(app, ["data", "organism", "--rule", "parity", "--alphabet", "bits", "--length", "8",
                              "--num-examples", "100", "--seed", "4", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    data = load(tmp_path / "organism_parity_bits_8_100.json")
    assert [len(data[s]) for s in SPLITS] == [80, 10, 10]
    assert all(ex["output"] == str(ex["input"].count("1") % 2) for ex in examples(data))
    bad = runner.invoke(app, ["data", "organism", "--rule", "nth", "--n", "5", "--length", "5",
                              "--num-examples", "10", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "--n: index 5 does not exist" in bad.stderr and "Traceback" not in bad.output
    res = runner.invoke(app, ["data", "--help"])
    assert "organism" in res.output and "capitalization" in res.output
