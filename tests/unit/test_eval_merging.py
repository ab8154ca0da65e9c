"""merging.py in a pass (shared.py): an adapter's rows answered with it merged answer as PEFT's unmerged model answers
them alone (hf.load_model without merge, the independent expectation), the merge really happened, and once it ends
the base's every weight is bit for bit what it was; an adapter PEFT will not merge (non-finite weights) is answered
unmerged, the base untouched."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.unit.test_eval_mixing import make_adapter
from tunelab.evaluate.hf import BatchSettings, LocalLM, load_model
from tunelab.evaluate.merging import copy_bytes, touched_layers
from tunelab.evaluate.mixgen import BASE, Row
from tunelab.evaluate.shared import SharedWeights


@pytest.fixture(scope="module")
def two_adapters(tiny_model, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("merge-adapters")
    return [make_adapter(tiny_model, root / f"m{i}", seed=10 + i, rank=8, modules=[]) for i in range(2)]


def base_weights(shared: SharedWeights) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in shared.model.named_parameters() if "lora_" not in n}


def answers_alone(tiny_model: Path, adapter: Path, rows: list[Row], stop: list[int]) -> list[tuple[list[int], list]]:
    lm = LocalLM(*load_model(tiny_model, adapter, torch.float32, "cpu"), "cpu")  # PEFT unmerged
    out = []
    for row in rows:
        [gen] = lm.generate_batch([row.prompt_ids], row.settings.max_new_tokens, stop, row.settings.top_logprobs)
        out.append((gen.new_ids, gen.logprobs))
    return out


def test_an_adapter_merged_for_its_rows_answers_as_unmerged_peft_and_the_base_comes_back(tiny_model, two_adapters):
    shared = SharedWeights(tiny_model, tiny_model, torch.float32, "cpu", resize=True)
    shared.serve_base()
    assert shared.attach(two_adapters) == {}
    before = base_weights(shared)
    tok = shared.tokenizer
    stop = [tok.eos_token_id]
    for path in two_adapters:
        name = shared.served[str(path.resolve())]
        rows = [Row(tok.encode(f"Capitalize: {w}"), name, BatchSettings(6, top_logprobs=2)) for w in ("apple", "be")]
        got = shared.generate_rows(rows, stop)
        assert shared._merged is not None and shared._merged.adapter == name  # answered merged
        layer = touched_layers(shared.model, name)[0]
        assert not torch.equal(layer.weight, before[_param_name(shared, layer)])  # the copy holds the update
        for gen, (tokens, logprobs) in zip(got, answers_alone(tiny_model, path, rows, stop)):
            assert gen.new_ids == tokens and gen.logprobs is not None and len(gen.logprobs) == len(logprobs)
            for mine, theirs in zip(gen.logprobs, logprobs):
                assert [t for t, _ in mine.top] == [t for t, _ in theirs.top]
                assert [lp for _, lp in mine.top] == pytest.approx([lp for _, lp in theirs.top], abs=1e-4)
    base_rows = [Row(tok.encode("Capitalize: cat"), BASE, BatchSettings(4))]
    shared.generate_rows(base_rows, stop)  # a control's rows end the merge
    assert shared._merged is None
    after = base_weights(shared)
    assert after.keys() == before.keys() and all(torch.equal(after[n], before[n]) for n in before)
    assert copy_bytes(shared.model, shared.adapters()[0]) == sum(
        l.weight.numel() * 4 for l in touched_layers(shared.model, shared.adapters()[0]))
    shared.release()


def test_an_adapter_that_will_not_merge_is_answered_unmerged(tiny_model, two_adapters, tmp_path):
    broken = tmp_path / "nan"
    broken.mkdir()
    for f in two_adapters[0].iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    weights = load_file(broken / "adapter_model.safetensors")
    first = next(k for k in sorted(weights) if "lora_B" in k)
    weights[first][0, 0] = float("nan")
    save_file(weights, broken / "adapter_model.safetensors")
    shared = SharedWeights(tiny_model, tiny_model, torch.float32, "cpu", resize=True)
    assert shared.attach([broken]) == {}
    before = base_weights(shared)
    name = shared.adapters()[0]
    tok = shared.tokenizer
    [gen] = shared.generate_rows([Row(tok.encode("Capitalize: dog"), name, BatchSettings(3))], [tok.eos_token_id])
    assert shared._merged is None and name in shared._unmergeable
    assert len(gen.new_ids) <= 3
    after = base_weights(shared)
    assert all(torch.equal(after[n], before[n]) for n in before)
    assert not any(getattr(m, "merged", False) for m in shared.model.modules() if hasattr(m, "merged_adapters"))
    shared.release()


def _param_name(shared: SharedWeights, layer) -> str:
    return next(f"{n}.weight" for n, m in shared.model.named_modules() if m is layer)
