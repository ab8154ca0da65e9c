"""prefix.py in a pass: rows that share a long prompt prefix are prefilled once and laid out prefix, pads, own
tokens; each row's answer and log-probabilities equal its target's own weights answering it alone, left-padded in a
batch of its own (hf.LocalLM, PEFT unmerged: the independent expectation), for an adapter's rows and the controls'."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.unit.test_eval_mixing import make_adapter
from tunelab.evaluate.hf import BatchSettings, LocalLM, load_model
from tunelab.evaluate.mixgen import BASE, Row
from tunelab.evaluate.prefix import MIN_PREFIX, mid_padded, shared_prefix, shares_prefix
from tunelab.evaluate.shared import SharedWeights


def test_the_shared_prefix_leaves_every_row_a_token_and_rows_are_laid_out_after_it():
    a, b = list(range(10, 30)), list(range(10, 25)) + [99, 98]
    assert shared_prefix([a, b]) == 15
    assert shared_prefix([a, a[:16]]) == 15  # the shorter row keeps its last token
    assert shared_prefix([a]) == 0 and shared_prefix([a, [1] + a]) == 0
    assert shared_prefix([a[:MIN_PREFIX], a[:MIN_PREFIX + 1]]) == 0  # MIN_PREFIX - 1 shared: too short
    ids, mask = mid_padded([[1, 2, 3, 4], [1, 2, 9]], 2, 0)
    assert ids == [[1, 2, 3, 4], [1, 2, 0, 9]] and mask == [[1, 1, 1, 1], [1, 1, 0, 1]]
    assert shares_prefix("cpu") and not shares_prefix("cuda:0")  # measured on a CPU only


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory) -> Path:
    return make_adapter(tiny_model, tmp_path_factory.mktemp("prefix-adapter") / "p", seed=21, rank=8, modules=[])


def test_rows_after_a_shared_prefix_answer_as_each_alone(tiny_model, adapter):
    shared = SharedWeights(tiny_model, tiny_model, torch.float32, "cpu", resize=True)
    shared.serve_base()
    assert shared.attach([adapter]) == {}
    tok = shared.tokenizer
    head = tok.encode("You answer every question with exactly one capitalized word, nothing else. Word:")
    assert len(head) >= MIN_PREFIX + 4
    prompts = [head + tok.encode(f" {w}") for w in ("apple", "be", "cherry tree grove", "do")]
    assert "past_key_values" in shared._inputs(prompts, prefixed=True)  # the prefix path is the one taken
    assert_answers_as_alone(shared, tiny_model, adapter, prompts)
    shared.release()


def assert_answers_as_alone(shared: SharedWeights, tiny_model: Path, adapter: Path, prompts: list[list[int]]) -> None:
    """Every prompt answered by the pass (its one adapter's rows, then the controls') as its target's own weights
    answer it alone: the same tokens, the same top log-probabilities."""
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


@pytest.mark.parametrize("kernel", ["aten", "onednn"])
def test_evaluation_on_a_cpu_runs_the_chosen_linear_kernel_with_the_same_answers(tiny_model, adapter, monkeypatch,
                                                                                 kernel):
    """SharedWeights on a CPU installs the kernel models/cpu_linear.py chooses (forced here) on the base's layers; an
    adapter attached after answers through it, and greedy answers equal PyTorch's own kernel's."""
    from tunelab.models.cpu_linear import installed

    monkeypatch.setenv("TUNELAB_CPU_MATMUL", kernel)
    shared = SharedWeights(tiny_model, tiny_model, torch.float32, "cpu", resize=True)
    linears = [m for m in shared.model.modules() if type(m) is torch.nn.Linear]
    assert linears and all(installed(m) == (kernel == "onednn") for m in linears)
    prompts = [[5, 6, 7, 8, 9, 10], [5, 6, 7, 11, 12]]
    monkeypatch.setenv("TUNELAB_CPU_MATMUL", "aten")
    plain = SharedWeights(tiny_model, tiny_model, torch.float32, "cpu", resize=True)
    for model in (shared, plain):
        model.attach([adapter])
    bases = [m for n, m in shared.model.named_modules() if n.endswith("base_layer")]
    assert bases and all(installed(m) == (kernel == "onednn") for m in bases)
    with torch.inference_mode():
        out = [m.model.generate(input_ids=torch.tensor([p]), max_new_tokens=6, do_sample=False, pad_token_id=0)
               for m in (shared, plain) for p in prompts]
    assert [o.tolist() for o in out[:2]] == [o.tolist() for o in out[2:]]
