"""Model-organism tasks: synthetic symbol sequences whose label follows a known rule.

For research on what a model can learn (and how fast, from how little): the rule is exact, so
every score is interpretable, and the `coin` rule gives a noise control whose label does not
depend on the input at all.

Inputs are symbols written space-separated ("1 0 1 1"), so a tokenizer sees one symbol per token.
Outputs are strings:

- parity: '0' or '1'. bits: the number of '1's mod 2; digits: the sum of the digits mod 2;
  letters: the number of vowels (a, e, i, o, u; not y) mod 2.
- majority: the most common symbol; ties go to the smallest symbol ('0' < '1' < … < '9', 'a' < … < 'z').
- first, last, nth: that symbol (nth: 0-based index `n`, which must exist in every sequence).
- length: the number of symbols, in decimal.
- constant: the given value, whatever the input.
- coin: '1' with probability p, else '0', drawn from its own seeded stream: independent of the input.

Sequences are distinct: they are drawn uniformly without replacement from all sequences of the
allowed lengths (with variable lengths, longer lengths are more frequent because more sequences
have them). The same seed gives the same sequences for every rule, so rules can be compared on
identical inputs; the same command gives the same file, byte for byte. The layout and the split
rule are those of the capitalization task.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from pathlib import Path

from tunelab.data.capitalization import split_counts, split_lists
from tunelab.errors import TunelabError
from tunelab.fsutil import atomic_write_json

ALPHABETS: dict[str, str] = {
    "bits": "01",
    "digits": "0123456789",
    "letters": "abcdefghijklmnopqrstuvwxyz",
}
RULES = ("parity", "majority", "first", "last", "nth", "length", "constant", "coin")
VOWELS = frozenset("aeiou")

RULE_DESCRIPTIONS: dict[str, str | dict[str, str]] = {
    "parity": {
        "bits": "number of '1' symbols mod 2",
        "digits": "sum of the digits mod 2",
        "letters": "number of vowels (a, e, i, o, u) mod 2",
    },
    "majority": "most common symbol; ties broken by the smallest symbol",
    "first": "the first symbol",
    "last": "the last symbol",
    "nth": "the symbol at 0-based index n",
    "length": "the number of symbols",
    "constant": "a constant value, independent of the input",
    "coin": "'1' with probability p, else '0', independent of the input (noise control)",
}


def describe_rule(rule: str, alphabet: str) -> str:
    d = RULE_DESCRIPTIONS[rule]
    return d[alphabet] if isinstance(d, dict) else d


def parity_label(symbols: list[str], alphabet: str) -> str:
    if alphabet == "bits":
        value = sum(1 for s in symbols if s == "1")
    elif alphabet == "digits":
        value = sum(int(s) for s in symbols)
    else:
        value = sum(1 for s in symbols if s in VOWELS)
    return str(value % 2)


def majority_label(symbols: list[str]) -> str:
    counts = Counter(symbols)
    top = max(counts.values())
    return min(s for s, c in counts.items() if c == top)


def label_for(rule: str, symbols: list[str], alphabet: str, n: int | None = None, constant: str | None = None) -> str:
    """The label of one sequence under a deterministic rule (coin is drawn separately)."""
    if rule == "parity":
        return parity_label(symbols, alphabet)
    if rule == "majority":
        return majority_label(symbols)
    if rule == "first":
        return symbols[0]
    if rule == "last":
        return symbols[-1]
    if rule == "nth":
        if n is None:
            raise ValueError("rule 'nth' needs its index n")
        return symbols[n]
    if rule == "length":
        return str(len(symbols))
    if rule == "constant":
        if constant is None:
            raise ValueError("rule 'constant' needs its value")
        return constant
    raise ValueError(f"rule {rule!r} has no deterministic label")


def _rule_tag(rule: str, n: int | None, p: float | None, constant: str | None) -> str:
    """The rule part of the file name: with its parameter, so sweeping it never overwrites a file."""
    if rule == "nth":
        return f"nth{n}"
    if rule == "coin":
        return f"coin{p:g}"
    if rule == "constant":
        if constant is None:
            raise ValueError("rule 'constant' needs its value")
        if re.fullmatch(r"[A-Za-z0-9.-]{1,32}", constant):
            return f"constant-{constant}"
        return f"constant-{hashlib.sha256(constant.encode()).hexdigest()[:8]}"
    return rule


def dataset_filename(rule_tag: str, alphabet: str, min_length: int, max_length: int, num_examples: int) -> str:
    lengths = str(min_length) if min_length == max_length else f"{min_length}-{max_length}"
    return f"organism_{rule_tag}_{alphabet}_{lengths}_{num_examples}.json"


def _resolve_lengths(length: int | None, min_length: int | None, max_length: int | None) -> tuple[int, int]:
    if length is not None:
        if min_length is not None or max_length is not None:
            raise TunelabError("give either --length, or --min-length and --max-length, not both", field="--length")
        min_length = max_length = length
        field = "--length"
    elif min_length is None and max_length is None:
        raise TunelabError("give the sequence length: --length L, or --min-length and --max-length", field="--length")
    elif min_length is None or max_length is None:
        missing = "--min-length" if min_length is None else "--max-length"
        raise TunelabError("variable length needs both --min-length and --max-length", field=missing)
    else:
        field = "--min-length"
    if min_length < 1:
        raise TunelabError("must be at least 1", field=field)
    if max_length < min_length:
        raise TunelabError(f"must be at least --min-length ({min_length})", field="--max-length")
    return min_length, max_length


def _check_rule_options(rule: str, min_length: int, n: int | None, p: float | None, constant: str | None) -> float | None:
    """Each rule takes only its own parameter; returns p (coin defaults to 0.5)."""
    if n is not None and rule != "nth":
        raise TunelabError(f"is used only by --rule nth (not {rule})", field="--n")
    if p is not None and rule != "coin":
        raise TunelabError(f"is used only by --rule coin (not {rule})", field="--p")
    if constant is not None and rule != "constant":
        raise TunelabError(f"is used only by --rule constant (not {rule})", field="--constant")
    if rule == "nth":
        if n is None:
            raise TunelabError("--rule nth needs the 0-based index: --n N", field="--n")
        if n < 0:
            raise TunelabError("must be at least 0 (0-based index)", field="--n")
        if n >= min_length:
            raise TunelabError(
                f"index {n} does not exist in sequences of length {min_length} (0-based: must be below the "
                "shortest length)", field="--n")
    if rule == "coin":
        p = 0.5 if p is None else p
        if not 0.0 <= p <= 1.0:
            raise TunelabError(f"must be a probability, 0 <= p <= 1 (got {p})", field="--p")
    if rule == "constant" and not constant:
        raise TunelabError("--rule constant needs a non-empty --constant VALUE", field="--constant")
    return p


def _decode(index: int, symbols: str, min_length: int, max_length: int) -> list[str]:
    """The index-th sequence in (length, then base-|alphabet| value) order."""
    k = len(symbols)
    for length in range(min_length, max_length + 1):
        block = k ** length
        if index < block:
            out = []
            for _ in range(length):
                index, digit = divmod(index, k)
                out.append(symbols[digit])
            return out[::-1]
        index -= block
    raise IndexError("sequence index out of range")


def _sample_indices(rng: random.Random, space: int, k: int) -> list[int]:
    """k distinct integers in [0, space), uniformly: random.sample, or (beyond what a range's length can
    hold) rejection of repeats, which are then vanishingly rare."""
    if space <= 2**62:
        return rng.sample(range(space), k)
    seen: set[int] = set()
    out: list[int] = []
    while len(out) < k:
        i = rng.randrange(space)
        if i not in seen:
            seen.add(i)
            out.append(i)
    return out


def _check_counts(num_examples: int, train_fraction: float) -> tuple[int, int, int]:
    n_train, n_val, n_test = split_counts(num_examples, train_fraction)
    if num_examples < 1 or min(n_train, n_val, n_test) < 1:
        raise TunelabError(
            f"{num_examples} examples at train fraction {train_fraction} leave an empty split "
            f"(train {n_train}, validation {n_val}, test {n_test}); use more examples",
            field="--num-examples",
        )
    return n_train, n_val, n_test


def _check_space(alphabet: str, lo: int, hi: int, num_examples: int) -> int:
    """How many distinct sequences exist; an error when fewer than asked for."""
    space = sum(len(ALPHABETS[alphabet]) ** k for k in range(lo, hi + 1))
    if num_examples > space:
        lengths = f"length {lo}" if lo == hi else f"lengths {lo}-{hi}"
        raise TunelabError(
            f"only {space} distinct {alphabet} sequences of {lengths} exist; asked for {num_examples} "
            "(use fewer examples, longer sequences or a larger alphabet)",
            field="--num-examples",
        )
    return space


def _labels(rule: str, seqs: list[list[str]], alphabet: str, n: int | None, p: float | None, constant: str | None,
            seed: int) -> list[str]:
    """Each sequence's label by `rule`; coin's flips come from their own seeded stream, so the inputs stay
    those of every other rule."""
    if rule != "coin":
        return [label_for(rule, s, alphabet, n=n, constant=constant) for s in seqs]
    if p is None:  # _check_rule_options gives coin its default
        raise ValueError("rule 'coin' needs its probability p")
    coin = random.Random(f"organism-coin:{seed}")
    return ["1" if coin.random() < p else "0" for _ in seqs]


def make_organism_dataset(
    rule: str,
    alphabet: str,
    out_dir: str | Path,
    num_examples: int,
    *,
    length: int | None = None,
    min_length: int | None = None,
    max_length: int | None = None,
    n: int | None = None,
    p: float | None = None,
    constant: str | None = None,
    train_fraction: float = 0.8,
    seed: int = 0,
) -> Path:
    """Sample `num_examples` distinct sequences, label them by `rule`, split, write organism_*.json."""
    if alphabet not in ALPHABETS:
        raise TunelabError(f"unknown alphabet {alphabet!r}: use one of {', '.join(ALPHABETS)}", field="--alphabet")
    if rule not in RULES:
        raise TunelabError(f"unknown rule {rule!r}: use one of {', '.join(RULES)}", field="--rule")
    lo, hi = _resolve_lengths(length, min_length, max_length)
    p = _check_rule_options(rule, lo, n, p, constant)
    if not 0 < train_fraction < 1:
        raise TunelabError("must be between 0 and 1 (exclusive)", field="--train-fraction")
    n_train, n_val, n_test = _check_counts(num_examples, train_fraction)
    symbols = ALPHABETS[alphabet]
    space = _check_space(alphabet, lo, hi, num_examples)

    rng = random.Random(seed)
    seqs = [_decode(i, symbols, lo, hi) for i in _sample_indices(rng, space, num_examples)]
    labels = _labels(rule, seqs, alphabet, n, p, constant, seed)
    examples = [{"input": " ".join(s), "output": y} for s, y in zip(seqs, labels)]
    data = {
        **split_lists(examples, n_train, n_val),
        "meta": {
            "task": "organism",
            "rule": rule,
            "rule_description": describe_rule(rule, alphabet),
            "alphabet": alphabet,
            "symbols": list(symbols),
            "length": lo if lo == hi else None,
            "min_length": lo,
            "max_length": hi,
            "n": n,
            "p": p,
            "constant": constant,
            "num_examples": num_examples,
            "train_fraction": train_fraction,
            "seed": seed,
            "split_counts": {"train": n_train, "validation": n_val, "test": n_test},
            "label_counts": dict(sorted(Counter(labels).items())),
            "sampling": "distinct sequences, uniform without replacement over all sequences of the allowed lengths",
            "input_format": "symbols separated by single spaces",
        },
    }
    out = Path(out_dir) / dataset_filename(_rule_tag(rule, n, p, constant), alphabet, lo, hi, num_examples)
    return atomic_write_json(out, data)
