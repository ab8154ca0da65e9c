"""groupfill.py in a pass: one adapter's rows of long-tailed lengths prefilled in groups cut by length, their caches
joined and decoded as one batch; each row's answer and log-probabilities equal its target's own weights answering
it alone in a batch of its own (hf.LocalLM, PEFT unmerged: the independent expectation) — after a shared prefix,
without one, and where the groups cannot be joined (each group a generate() of its own)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.unit.test_eval_mixing import make_adapter
from tunelab.evaluate import groupfill
from tunelab.evaluate.batchcut import prefill_groups
from tunelab.evaluate.hf import BatchSettings, LocalLM, load_model
from tunelab.evaluate.mixgen import BASE, Row
from tunelab.evaluate.prefix import MIN_PREFIX, shared_prefix
from tunelab.evaluate.shared import SharedWeights


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory) -> Path:
    return make_adapter(tiny_model, tmp_path_factory.mktemp("groupfill-adapter") / "g", seed=23, rank=8, modules=[])


def _prompts(tok, head: list[int]) -> list[list[int]]:
    """Long-tailed: a long row among short ones, so the length cut makes groups."""
    words = ["apple", "be", "cherry tree grove by the old stone wall where the river bends twice " * 4, "do", "egg",
             "fig and grape and melon", "hi"]
    return [head + tok.encode(f" {w}") for w in words]


def _check_alone(shared: SharedWeights, tiny_model: Path, adapter: Path, prompts: list[list[int]]) -> None:
    stop = [shared.tokenizer.eos_token_id]
    name = shared.adapters()[0]
    for who, path in ((name, adapter), (BASE, None)):
        rows = [Row(p, who, BatchSettings(6, top_logprobs=3)) for p in prompts]
        got = shared.generate_rows(rows, stop)
        lm = LocalLM(*load_model(tiny_model, path, torch.float32, "cpu"), "cpu")
        for row, mine in zip(rows, got):
            [theirs] = lm.generate_batch([row.prompt_ids], 6, stop, 3)
            assert mine.new_ids == theirs.new_ids
            assert mine.logprobs is not None and theirs.logprobs is not None
            for m, t in zip(mine.logprobs, theirs.logprobs):
                assert [x for x, _ in m.top] == [x for x, _ in t.top]
                assert [lp for _, lp in m.top] == pytest.approx([lp for _, lp in t.top], abs=1e-4)


@pytest.mark.parametrize("with_prefix", [True, False])
def test_groups_prefilled_apart_and_decoded_as_one_answer_as_each_row_alone(tiny_model, adapter, monkeypatch,
                                                                           with_prefix):
    shared = SharedWeights(tiny_model, tiny_model, torch.float32, "cpu", resize=True)
    shared.serve_base()
    assert shared.attach([adapter]) == {}
    shared.group_rows = 3
    tok = shared.tokenizer
    head = tok.encode("You answer every question with exactly one capitalized word, nothing else. Word:")
    prompts = _prompts(tok, head if with_prefix else [])
    if not with_prefix:  # no shared start: rows begin with their own word
        prompts = [p[::-1] for p in prompts]
    assert (shared_prefix(prompts) >= MIN_PREFIX) == with_prefix
    groups = prefill_groups([len(p) for p in prompts], 3, "cpu")
    assert len(groups) > 1
    joined: list[tuple[int, int] | None] = []  # (the batch's width, the joined cache's tokens) as generate() got them
    real = groupfill.grouped_inputs

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        joined.append(None if out is None else (out["input_ids"].shape[1], out["past_key_values"].get_seq_length()))
        return out

    monkeypatch.setattr("tunelab.evaluate.shared.grouped_inputs", spy)
    _check_alone(shared, tiny_model, adapter, prompts)
    width = max(map(len, prompts))
    # both targets' rows took the joined path, its cache every row but its last token at the batch's width
    assert joined == [(width, width - 1)] * 2
    shared.release()


def test_groups_that_cannot_be_joined_are_each_a_generate_of_their_own(tiny_model, adapter):
    """A group whose longest row is the prefix and one token has nothing to prefill: no joined cache, the groups
    run one after the other, and still answer as alone."""
    shared = SharedWeights(tiny_model, tiny_model, torch.float32, "cpu", resize=True)
    shared.serve_base()
    assert shared.attach([adapter]) == {}
    shared.group_rows = 2
    tok = shared.tokenizer
    head = tok.encode("You answer every question with exactly one capitalized word, nothing else. Word:")
    long = head + tok.encode(" cherry tree grove by the old stone wall where the river bends" * 3)
    prompts = [long, long[:-3], head + [long[len(head)]], head + [long[len(head) + 1]]]
    prefix = shared_prefix(prompts)
    groups = prefill_groups([len(p) for p in prompts], 2, "cpu")
    assert prefix == len(head) and len(groups) == 2
    assert not groupfill.decodes_together(groups, [len(p) for p in prompts], prefix)
    _check_alone(shared, tiny_model, adapter, prompts)
    shared.release()
