"""Measure a dataset the way training will see it: real tokenizer, real prompt format, and the
same best-fit-decreasing packing the trainer uses (TRL's), so no number here is guessed."""

from __future__ import annotations

import hashlib
import random
from array import array
from dataclasses import asdict, dataclass
from importlib.metadata import version
from statistics import mean
from typing import Any

from tunelab.data.formatting import PromptFormat
from tunelab.data.splits import SPLITS, load_data
from tunelab.diskcache import cached_json
from tunelab.spec import DatasetSpec


@dataclass
class SplitStats:
    examples: int
    tokens: int
    completion_tokens: int
    mean_len: float
    min_len: int
    p50_len: int
    p90_len: int
    p99_len: int
    max_len: int
    truncated: int  # examples longer than max_seq_len: their answer is cut
    no_answer_left: int  # of those, examples whose prompt alone fills max_seq_len


@dataclass
class PackingStats:
    max_seq_len: int
    examples: int
    sequences: int
    density: float  # examples per packed sequence
    fill_fraction: float  # real tokens / (sequences × max_seq_len): the non-pad share were they padded


@dataclass
class PaddingStats:
    batch_size: int
    batches: int
    padded_tokens: int  # what the model processes (batch × longest in batch, summed)
    nonpad_fraction: float
    mean_tokens_per_microbatch: float
    max_tokens_per_microbatch: int


@dataclass
class DatasetMeasurement:
    """A dataset as training sees it: token statistics per split; for train, packing, padding and every length."""

    splits: dict[str, SplitStats]
    packing: PackingStats
    padding: PaddingStats
    train_lengths: list[int]

    @property
    def train(self) -> SplitStats:
        return self.splits["train"]

    def to_json(self) -> dict[str, Any]:
        """What `estimate --json` reports under "dataset" (the lengths left out)."""
        return {"splits": {k: asdict(v) for k, v in self.splits.items()}, "packing": asdict(self.packing),
                "padding": asdict(self.padding)}


def _pct(sorted_vals: list[int], q: float) -> int:
    return sorted_vals[min(len(sorted_vals) - 1, int(q * (len(sorted_vals) - 1) + 0.5))]


def split_stats(encoded: list[dict], max_seq_len: int) -> SplitStats:
    lengths = sorted(len(e["input_ids"]) for e in encoded)
    return SplitStats(
        examples=len(lengths),
        tokens=sum(lengths),
        completion_tokens=sum(sum(e["completion_mask"]) for e in encoded),
        mean_len=round(mean(lengths), 2),
        min_len=lengths[0],
        p50_len=_pct(lengths, 0.5),
        p90_len=_pct(lengths, 0.9),
        p99_len=_pct(lengths, 0.99),
        max_len=lengths[-1],
        truncated=sum(1 for n in lengths if n > max_seq_len),
        no_answer_left=sum(1 for e in encoded if first_answer_index(e["completion_mask"]) >= max_seq_len),
    )


def first_answer_index(mask: list[int]) -> int:
    """Position of the first loss-carrying token (the length when there is none)."""
    return next((i for i, m in enumerate(mask) if m), len(mask))


def simulate_bfd_packing(lengths: list[int], max_seq_len: int) -> PackingStats:
    """Pack with TRL's own BFD (what SFTTrainer does with packing_strategy='bfd'). The packs' count is kept on disk
    per lengths, max_seq_len and TRL version (diskcache.py): the plan packs a sweep's data once, and `tunelab run`'s
    checks read its count rather than import TRL's stack again (seconds of every run's start)."""
    digest = hashlib.sha256(array("q", lengths).tobytes()).hexdigest()
    sequences = int(cached_json("bfd-packs", [digest, len(lengths), max_seq_len, version("trl")],
                                lambda: _bfd_packs(lengths, max_seq_len)))
    tokens = sum(min(n, max_seq_len) for n in lengths)
    return PackingStats(
        max_seq_len=max_seq_len,
        examples=len(lengths),
        sequences=sequences,
        density=round(len(lengths) / sequences, 4),
        fill_fraction=round(tokens / (sequences * max_seq_len), 4),
    )


def _bfd_packs(lengths: list[int], max_seq_len: int) -> int:
    """The sequences TRL's BFD packs these lengths into."""
    import datasets
    from datasets import Dataset
    from trl.data_utils import pack_dataset

    datasets.disable_progress_bars()
    ds = Dataset.from_dict({"input_ids": [[0] * n for n in lengths]})
    return len(pack_dataset(ds, max_seq_len, "bfd")["seq_lengths"])


def simulate_padding(lengths: list[int], batch_size: int, max_seq_len: int, seed: int = 0) -> PaddingStats:
    """Dynamic padding at a micro-batch size: shuffled batches (seeded), each padded to its longest."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    padded = 0
    per_batch = []
    for i in range(0, len(order), batch_size):
        batch = [min(lengths[j], max_seq_len) for j in order[i : i + batch_size]]
        tokens = max(batch) * len(batch)
        per_batch.append(tokens)
        padded += tokens
    real = sum(min(n, max_seq_len) for n in lengths)
    return PaddingStats(batch_size, len(per_batch), padded, round(real / padded, 4),
                        round(mean(per_batch), 1), max(per_batch))


def measure_dataset(dataset: DatasetSpec, tokenizer: Any, fmt: PromptFormat, template: str | None,
                    max_seq_len: int, batch_size: int, system_prompt: str | None = None,
                    seed: int = 0) -> DatasetMeasurement:
    """Per split present: token statistics; for train: packing and padding simulations."""
    data = load_data(dataset, None)
    reader = data.reader(template, system_prompt)
    splits: dict[str, SplitStats] = {}
    train_lengths: list[int] = []
    for split in SPLITS:
        if split not in data.splits:
            continue
        enc = fmt.encode_examples(data.examples(split, reader), tokenizer)
        splits[split] = split_stats(enc, max_seq_len)
        if split == "train":
            train_lengths = [len(e["input_ids"]) for e in enc]
    data.require("train")
    return DatasetMeasurement(splits, simulate_bfd_packing(train_lengths, max_seq_len),
                              simulate_padding(train_lengths, batch_size, max_seq_len, seed), train_lengths)
