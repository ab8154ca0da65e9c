"""The whole-sweep benchmark's rows (issue 66 item 1): passages of long-tailed length, each asking for its first
word capitalized, written once in the shapes every tool reads (peerlib/job.py Inputs: chat JSONL and alpaca JSON).

Why this task: the answer is one word a 135M model can learn to exact-match in one short epoch (find the passage's
first word, capitalize it: the demo's capitalization, now at the head of a long context), the base model answers
in sentences (so a trained adapter's gain shows), and the prompt's length is free to follow any distribution
without changing what is asked. The lengths are what a lab's own data has: a long tail. A passage's word count is
drawn from a lognormal (median MEDIAN_WORDS, sigma SIGMA: P99 / median = exp(2.326 sigma) ≈ 26), so the rendered
rows (system + user + answer in SmolLM2's chat template, ~2.8 tokens a rare web2 word plus ~35 of template) come
out near a median of 60 tokens and a P99 near 600 as drawn. A drawn row longer than max_seq_len (512: ~1 % of them) is dropped
and another drawn: `tunelab run` refuses rows whose answer max_seq_len would cut (naming them, and saying to drop
them or raise max_seq_len), so a lab drops them, for every tool alike; the rows as written therefore end at 512
(DATA.json counts the drops). The quantiles of the rows as written are printed by the benchmark (lengths()).
Deterministic: the same seed, the same bytes (the word list is the installed english-words package's, as the demo's)."""

from __future__ import annotations

import json
import math
import random
import statistics
from dataclasses import dataclass
from pathlib import Path

from peerlib.job import Inputs

SYSTEM = "You answer with one word."
QUESTION = "Passage: {passage}\n\nWhat is the first word of the passage, capitalized?"
MEDIAN_WORDS = 9.0  # ~2.8 tokens a (rare, web2) word + ~35 of template: a row's median near 60 tokens
SIGMA = 1.40  # the words' P99 / median = exp(2.326 sigma) ≈ 26: with the fixed template, rows' P99 near 600
MAX_WORDS = 700  # the lognormal's far tail clipped: a row of ~900 tokens, far past max_seq_len anyway
WORD_LENGTHS = range(3, 10)


@dataclass(frozen=True)
class SweepData:
    """The sizes of the benchmark's data: rows per split and the seed they are drawn from. The defaults are the
    sizes measured (docs/benchmarks.md): one repeat of all five pipelines took over an hour at them on two cores."""

    train: int = 96
    validation: int = 8
    test: int = 32
    seed: int = 0


def word_pool() -> list[str]:
    from tunelab.data.capitalization import english_words

    return sorted({w for n in WORD_LENGTHS for w in english_words(n)})


def passage_rows(n: int, rng: random.Random, pool: list[str]) -> list[dict]:
    """`n` rows {"input": passage, "output": its first word capitalized}, lengths lognormal."""
    rows = []
    for _ in range(n):
        words = min(MAX_WORDS, max(3, round(rng.lognormvariate(math.log(MEDIAN_WORDS), SIGMA))))
        picked = [rng.choice(pool) for _ in range(words)]
        rows.append({"input": " ".join(picked), "output": picked[0].capitalize()})
    return rows


def messages(passage: str, answer: str | None) -> list[dict]:
    out = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION.format(passage=passage)}]
    if answer is not None:
        out.append({"role": "assistant", "content": answer})
    return out


def _length(tok, chat: list[dict]) -> int:
    text = str(tok.apply_chat_template(chat, tokenize=False))
    return len(tok(text, add_special_tokens=False)["input_ids"])


def draw(n: int, rng: random.Random, pool: list[str], tok, max_seq_len: int) -> tuple[list[dict], int]:
    """`n` rows whose rendered length fits max_seq_len, and how many drawn rows did not (dropped: tunelab refuses a
    row whose answer max_seq_len would cut, naming it, and a lab drops such rows for every tool alike)."""
    rows: list[dict] = []
    dropped = 0
    while len(rows) < n:
        (row,) = passage_rows(1, rng, pool)
        if _length(tok, messages(row["input"], row["output"])) <= max_seq_len:
            rows.append(row)
        else:
            dropped += 1
    return rows, dropped


def write(data_dir: Path, model_dir: Path, sizes: SweepData, max_seq_len: int, model: str = "smollm2") -> Inputs:
    """The rows drawn from sizes.seed (those over max_seq_len dropped) and written under data_dir in every shape;
    DATA.json records the seed, the sizes and the drops. The Inputs that name them."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    rng = random.Random(sizes.seed)
    pool = word_pool()
    counts = {"train": sizes.train, "validation": sizes.validation, "test": sizes.test}
    data_dir.mkdir(parents=True, exist_ok=True)
    dropped = {}
    for split, n in counts.items():
        rows, dropped[split] = draw(n, rng, pool, tok, max_seq_len)
        (data_dir / f"{split}.jsonl").write_text(
            "".join(json.dumps({"messages": messages(r["input"], r["output"])}) + "\n" for r in rows))
        (data_dir / f"{split}.alpaca.json").write_text(json.dumps(
            [{"instruction": QUESTION.format(passage=r["input"]), "input": "", "output": r["output"],
              "system": SYSTEM} for r in rows], indent=0))
    (data_dir / "DATA.json").write_text(json.dumps({"seed": sizes.seed, "rows": counts, "max_seq_len": max_seq_len,
                                                    "dropped_over_max_seq_len": dropped}, indent=1) + "\n")
    return Inputs(model=model, model_dir=model_dir, data_dir=data_dir, splits=counts)


def lengths(inputs: Inputs, split: str = "train") -> list[int]:
    """Each row's token count as the model's own chat template renders it (system, user, answer)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(inputs.model_dir)
    return [_length(tok, r["messages"]) for r in inputs.rows(split)]


def dropped(inputs: Inputs) -> dict[str, int]:
    return json.loads((inputs.data_dir / "DATA.json").read_text())["dropped_over_max_seq_len"]


def mean_tokens(counts: list[int], max_seq_len: int) -> float:
    """The training rows' mean token count as a pack holds them (a row over max_seq_len, which write() drops
    anyway, counted at max_seq_len): what a packed batch's size is priced from (SweepSpec.packed_batch)."""
    return statistics.mean(min(c, max_seq_len) for c in counts)


def describe(counts: list[int], max_seq_len: int) -> str:
    """Median, P99 and max of the rows' token counts, and how many max_seq_len cuts."""
    ordered = sorted(counts)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    cut = sum(c > max_seq_len for c in ordered)
    return (f"{len(ordered)} rows, tokens median {statistics.median(ordered):.0f}, P99 {p99}, max {ordered[-1]}, "
            f"{cut} over max_seq_len {max_seq_len}")
