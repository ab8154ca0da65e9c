"""groupfill.py in a pass: one adapter's rows of long-tailed lengths prefilled in groups cut by length, their caches
joined and decoded as one batch; each row's answer and log-probabilities equal its target's own weights answering
it alone in a batch of its own (hf.LocalLM, PEFT unmerged: the independent expectation) — after a shared prefix,
without one, and where the groups cannot be joined (each group a generate() of its own)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.unit.test_eval_mixing import make_adapter
from tests.unit.test_eval_prefix import assert_answers_as_alone
from tunelab.evaluate import groupfill
from tunelab.evaluate.batchcut import prefill_groups
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


def _serving(tiny_model: Path, adapter: Path, group_rows: int) -> SharedWeights:
    """The base with the adapter beside it, prefill groups of at most `group_rows` rows (a pass's batch size)."""
    shared = SharedWeights(tiny_model, tiny_model, torch.float32, "cpu", resize=True)
    shared.serve_base()
    assert shared.attach([adapter]) == {}
    shared.group_rows = group_rows
    return shared


@pytest.mark.parametrize("with_prefix", [True, False])
def test_groups_prefilled_apart_and_decoded_as_one_answer_as_each_row_alone(tiny_model, adapter, monkeypatch,
                                                                           with_prefix):
    shared = _serving(tiny_model, adapter, 3)
    tok = shared.tokenizer
    head = tok.encode("You answer every question with exactly one capitalized word, nothing else. Word:")
    prompts = _prompts(tok, head if with_prefix else [])
    if not with_prefix:  # no shared start: rows begin with their own word
        prompts = [p[::-1] for p in prompts]
    assert (shared_prefix(prompts) >= MIN_PREFIX) == with_prefix
    groups = prefill_groups([len(p) for p in prompts], 3, "cpu")
    assert len(groups) > 1
    joined: list[tuple[int, int, int] | None] = []  # (the batch's width, the cache's tokens and bytes) as made
    real = groupfill.grouped_inputs

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        cache = None if out is None else out["past_key_values"]
        joined.append(None if cache is None else (out["input_ids"].shape[1], cache.get_seq_length(), sum(
            layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)))
        return out

    monkeypatch.setattr("tunelab.evaluate.shared.grouped_inputs", spy)
    assert_answers_as_alone(shared, tiny_model, adapter, prompts)
    width = max(map(len, prompts))
    # both targets' rows took the joined path, its cache every row but its last token at the batch's width, its
    # bytes what the guard prices from the config
    assert shared.architecture is not None
    held = groupfill.cache_bytes(shared.architecture, len(prompts), width - 1, 4)
    assert joined == [(width, width - 1, held)] * 2
    # where the joined cache would take over a quarter of the free memory, each group decodes on its own
    monkeypatch.setattr("tunelab.evaluate.shared.free_bytes", lambda device: 4 * held - 1)
    assert_answers_as_alone(shared, tiny_model, adapter, prompts)
    assert len(joined) == 2
    shared.release()


def test_groups_that_cannot_be_joined_are_each_a_generate_of_their_own(tiny_model, adapter):
    """A group whose longest row is the prefix and one token has nothing to prefill: no joined cache, the groups
    run one after the other, and still answer as alone."""
    shared = _serving(tiny_model, adapter, 2)
    tok = shared.tokenizer
    head = tok.encode("You answer every question with exactly one capitalized word, nothing else. Word:")
    long = head + tok.encode(" cherry tree grove by the old stone wall where the river bends" * 3)
    prompts = [long, long[:-3], head + [long[len(head)]], head + [long[len(head) + 1]]]
    prefix = shared_prefix(prompts)
    groups = prefill_groups([len(p) for p in prompts], 2, "cpu")
    assert prefix == len(head) and len(groups) == 2
    assert not groupfill.decodes_together(groups, [len(p) for p in prompts], prefix)
    assert_answers_as_alone(shared, tiny_model, adapter, prompts)
    shared.release()


def test_a_model_whose_forward_keeps_every_logit_is_prefilled_without_asking(tiny_model):
    """logits_to_keep is asked of a forward only where it takes one (under PEFT, its base's): a model without it
    prefills every position's logits, which the groups never read."""
    shared = SharedWeights(tiny_model, tiny_model, torch.float32, "cpu", resize=True)
    assert groupfill._keeps_logits(shared.model)  # Llama's forward takes it

    class Plain(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None):
            raise AssertionError("not called")

    assert not groupfill._keeps_logits(Plain())
    shared.release()
