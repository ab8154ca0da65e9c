"""The capitalization task: lower-case English words -> the same word capitalized.

Words come from an installed package (english-words), never from the network. Sampling is seeded,
and the seed is written into the dataset file, so the same command gives the same file.
"""

from __future__ import annotations

import random
from pathlib import Path

from english_words import get_english_words_set

from tunelab.errors import TunelabError
from tunelab.fsutil import atomic_write_json

WORD_SOURCE = "english-words:web2"


def english_words(length: int) -> list[str]:
    """All lower-case alphabetic words of the given length, sorted (so sampling depends only on the seed)."""
    words = get_english_words_set(["web2"], lower=True, alpha=True)
    return sorted(w for w in words if len(w) == length and w.isascii())


def dataset_filename(word_len: int, train_fraction: float, num_words: int) -> str:
    return f"words_{word_len}L_{round(train_fraction * 100)}P_{num_words}.json"


def split_counts(n: int, train_fraction: float) -> tuple[int, int, int]:
    """Train gets train_fraction; the rest is halved between validation and test (each at least 1)."""
    n_train = int(round(n * train_fraction))
    rest = n - n_train
    n_val = rest // 2
    n_test = rest - n_val
    return n_train, n_val, n_test


def split_lists(examples: list[dict], n_train: int, n_val: int) -> dict[str, list[dict]]:
    """The generators' file layout: train, then validation, then test, in sampling order."""
    return {"train": examples[:n_train], "validation": examples[n_train : n_train + n_val],
            "test": examples[n_train + n_val :]}


def make_capitalization_dataset(
    word_len: int, num_words: int, out_dir: str | Path, train_fraction: float = 0.8, seed: int = 0
) -> Path:
    """Sample `num_words` distinct words of length `word_len`, split them, write words_{L}L_{P}P_{N}.json."""
    if word_len < 1:
        raise TunelabError("must be at least 1", field="--word-len")
    if not 0 < train_fraction < 1:
        raise TunelabError("must be between 0 and 1 (exclusive)", field="--train-fraction")
    n_train, n_val, n_test = split_counts(num_words, train_fraction)
    if min(n_train, n_val, n_test) < 1:
        raise TunelabError(
            f"{num_words} words at train fraction {train_fraction} leave an empty split "
            f"(train {n_train}, validation {n_val}, test {n_test}); use more words",
            field="--num-words",
        )
    pool = english_words(word_len)
    if len(pool) < num_words:
        raise TunelabError(
            f"only {len(pool)} distinct {word_len}-letter words exist in {WORD_SOURCE}; asked for {num_words}",
            field="--num-words",
        )
    rng = random.Random(seed)
    chosen = rng.sample(pool, num_words)
    examples = [{"input": w, "output": w.capitalize()} for w in chosen]
    data = {
        **split_lists(examples, n_train, n_val),
        "meta": {
            "task": "capitalization",
            "word_len": word_len,
            "num_words": num_words,
            "train_fraction": train_fraction,
            "seed": seed,
            "source": WORD_SOURCE,
        },
    }
    out = Path(out_dir) / dataset_filename(word_len, train_fraction, num_words)
    return atomic_write_json(out, data)
