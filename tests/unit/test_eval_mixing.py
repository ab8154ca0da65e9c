"""The parts of a one-pass evaluation, each against an independent expectation: a mixed-adapter batch answers
every row as its own target's weights answer it alone (hf.LocalLM, the one-at-a-time path); a sampled row
draws what seeded_sampler draws; the queue's batches (longest first, own adapter first, an error kept with its
adapter); which targets group and why others go alone; how adapters are chunked by memory and items waved."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
import torch

from tunelab.evaluate.decoding import Sampling, row_sampler, seeded_sampler
from tunelab.evaluate.grouping import adapter_blocker, chunks, group_targets
from tunelab.evaluate.hf import BatchSettings, Generation, LocalLM, load_model
from tunelab.evaluate.mixbatch import AdapterQueue, MixedBatcher
from tunelab.evaluate.mixgen import BASE, Row
from tunelab.evaluate.shared import AdapterView, SharedWeights, adapter_bytes
from tunelab.evaluate.targets import Target
from tunelab.evaluate.work import TargetWork
from tunelab.rundir.config import RunConfig

MODULES = ["embed_tokens", "lm_head"]


def make_adapter(base: Path, out: Path, seed: int, rank: int = 4, modules: list[str] | None = None, **extra) -> Path:
    """A random-init LoRA adapter (A and B random, saved modules perturbed), with the base's tokenizer beside it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM",
        modules_to_save=MODULES if modules is None else modules, **extra))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "modules_to_save" in name:
                param.add_(0.5 * torch.randn_like(param))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(tiny_model, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("adapters")
    return [make_adapter(tiny_model, root / f"a{i}", seed=i, rank=4 * (i + 1)) for i in range(2)]


def alone(tiny_model: Path, adapter: Path | None, row: Row, stop_ids: list[int]) -> Generation:
    """The row answered by its target's own weights, in a batch of its own (the one-at-a-time path)."""
    lm = LocalLM(*load_model(tiny_model, adapter, torch.float32, "cpu"), "cpu")
    s = row.settings
    [gen] = lm.generate_batch([row.prompt_ids], s.max_new_tokens, stop_ids, s.top_logprobs, sampling=s.sampling,
                              seeds=[row.seed] if row.seed is not None else None, stop_seqs=s.stop_seqs)
    return gen


def test_a_mixed_batch_answers_each_row_as_its_target_alone(tiny_model, adapters):
    shared = SharedWeights(tiny_model, tiny_model, torch.float32, "cpu", resize=True)
    shared.serve_base()
    assert shared.attach(adapters) == {} and shared.mixing_refused() is None
    names = {BASE: None, shared.served[str(adapters[0].resolve())]: adapters[0],
             shared.served[str(adapters[1].resolve())]: adapters[1]}
    tok = shared.tokenizer
    stop_ids = [tok.eos_token_id]
    hot = Sampling(1.0, top_p=0.9, seed=3)
    settings = [BatchSettings(6), BatchSettings(3, top_logprobs=2), BatchSettings(8, sampling=hot),
                BatchSettings(5, stop_seqs=("e",)), BatchSettings(7, top_logprobs=0, sampling=Sampling(0.7, top_k=5))]
    rows = [Row(tok.encode(f"Capitalize: {word}"), adapter, settings[i % len(settings)],
                seed=1000 + i if settings[i % len(settings)].sampling else None)
            for i, (word, adapter) in enumerate((w, a) for w in ("apple", "be", "cherry tree", "do") for a in names)]
    mixed = shared.generate_rows(rows, stop_ids)
    for row, got in zip(rows, mixed):
        want = alone(tiny_model, names[row.adapter], row, stop_ids)
        assert (got.new_ids, got.text, got.hit_stop) == (want.new_ids, want.text, want.hit_stop), row
        assert len(got.new_ids) <= row.settings.max_new_tokens
        assert (got.logprobs is None) == (want.logprobs is None)
        for g, w in zip(got.logprobs or [], want.logprobs or []):
            assert (g.token_id, g.token, [t for t, _ in g.top]) == (w.token_id, w.token, [t for t, _ in w.top])
            assert g.logprob == pytest.approx(w.logprob, abs=1e-4)
    assert len({tuple(g.new_ids) for g in mixed}) > len(mixed) // 2  # the adapters answer differently
    prompt, conts = tok.encode("Capitalize: apple"), [tok.encode("Apple"), tok.encode("APPLE")]
    for name, adapter in names.items():  # the choice built-in's path: log-probabilities of given answers
        lm = LocalLM(*load_model(tiny_model, adapter, torch.float32, "cpu"), "cpu")
        assert AdapterView(shared, name).continuation_logprobs(prompt, conts) == pytest.approx(
            lm.continuation_logprobs(prompt, conts), abs=1e-4)
    shared.release()


def test_a_sampled_row_draws_what_seeded_sampler_draws_and_a_greedy_row_keeps_its_logits():
    torch.manual_seed(0)
    scores, ids = torch.randn(4, 50), torch.zeros(4, 3, dtype=torch.long)
    hot, cold = Sampling(1.3, top_p=0.8, seed=1), Sampling(0.5, top_k=7, seed=2)
    mixed = row_sampler([hot, None, cold, hot], [11, None, 12, 13], "cpu")
    alone_hot, alone_cold = seeded_sampler(hot, [11, 13], "cpu"), seeded_sampler(cold, [12], "cpu")
    for _ in range(5):  # successive steps: each row's generator advances as it would in a batch of its own
        out = mixed(ids, scores)
        assert torch.equal(out[[0, 3]], alone_hot(ids[[0, 3]], scores[[0, 3]]))
        assert torch.equal(out[[2]], alone_cold(ids[[2]], scores[[2]]))
        assert torch.equal(out[1], scores[1])  # greedy: HF's argmax picks from the model's own logits
        assert (out[[0, 2, 3]] == 0).sum() == 3  # one token left possible per sampled row


def queued(batcher: MixedBatcher, requests: list[tuple[str, int]]) -> list[Generation | BaseException]:
    """Submit (adapter, prompt length) requests concurrently; each one's answer or error."""
    out: list[Generation | BaseException] = [BaseException()] * len(requests)

    async def one(i: int, adapter: str, length: int) -> None:
        try:
            out[i] = await AdapterQueue(batcher, adapter, [0]).submit(list(range(length)), BatchSettings(4))
        except Exception as exc:
            out[i] = exc

    async def all_of() -> None:
        async with anyio.create_task_group() as tg:
            for i, (adapter, length) in enumerate(requests):
                tg.start_soon(one, i, adapter, length)

    anyio.run(all_of)
    return out


def recorder() -> tuple[list[list[tuple[str, int]]], Callable[[list[Row], list[int]], list[Generation]]]:
    """(the batches it ran, as (adapter, prompt length) rows; a run_rows answering each row with its length that
    fails any batch holding adapter 'bad')."""
    batches: list[list[tuple[str, int]]] = []

    def run_rows(rows: list[Row], stop_ids: list[int]) -> list[Generation]:
        batches.append([(r.adapter, len(r.prompt_ids)) for r in rows])
        if any(r.adapter == "bad" for r in rows):
            raise RuntimeError("bad weights")
        return [Generation([len(r.prompt_ids)], r.adapter, False) for r in rows]
    return batches, run_rows


def test_batches_go_longest_first_own_adapter_first_and_an_error_stays_with_its_adapter():
    batches, run_rows = recorder()
    requests = [("a", 5), ("b", 9), ("a", 3), ("b", 2), ("a", 7), ("c", 1)]
    out = queued(MixedBatcher(run_rows, 3), requests)
    assert [(g.text, g.new_ids[0]) for g in out] == requests  # each caller gets its own row's answer
    # the longest waiting, (b, 9), leads; its adapter's rows first, then the longest others; rows by length
    assert batches == [[("b", 2), ("a", 7), ("b", 9)], [("c", 1), ("a", 3), ("a", 5)]]
    batches.clear()
    out = queued(MixedBatcher(run_rows, 4), [("a", 4), ("bad", 3), ("a", 2), ("bad", 1)])
    assert [isinstance(g, RuntimeError) for g in out] == [False, True, False, True]
    assert batches == [[("bad", 1), ("a", 2), ("bad", 3), ("a", 4)], [("a", 2), ("a", 4)], [("bad", 1), ("bad", 3)]]
    batches.clear()  # a CPU's queue: an adapter's rows from half a batch on go alone, fewer are filled
    queued(MixedBatcher(run_rows, 4, fill_below=2), [("a", 5), ("a", 4), ("b", 3), ("c", 2)])
    assert batches == [[("a", 4), ("a", 5)], [("c", 2), ("b", 3)]]


def test_rows_answered_at_once_go_in_the_batches_of_the_queue_with_every_row_waiting():
    """generate_now (tunelab's own loop, batched.py) cuts the batches the queue cuts when every request waits
    at once, counts them alike, and keeps a batch's error with its adapter's rows."""
    from tunelab.evaluate.mixbatch import RowKey

    cases = [(3, None, [("a", 5), ("b", 9), ("a", 3), ("b", 2), ("a", 7), ("c", 1)]),
             (4, None, [("a", 4), ("bad", 3), ("a", 2), ("bad", 1)]),
             (4, 2, [("a", 5), ("a", 4), ("b", 3), ("c", 2)])]
    for size, fill_below, requests in cases:
        queue_batches, run_rows = recorder()
        queue = MixedBatcher(run_rows, size, fill_below)
        queue_out = queued(queue, requests)
        now_batches, run_rows = recorder()
        now = MixedBatcher(run_rows, size, fill_below)
        rows = [Row(list(range(n)), a, RowKey(4, adapter=a, stop_ids=(0,))) for a, n in requests]
        now_out = now.generate_now(rows)
        assert now_batches == queue_batches and (now.batches, now.mixed) == (queue.batches, queue.mixed) != (0, 0)
        def seen(out: list) -> list:
            return [(g.text, g.new_ids[0]) if isinstance(g, Generation) else type(g) for g in out]
        assert seen(now_out) == seen(queue_out) == [(a, n) if a != "bad" else RuntimeError for a, n in requests]


def test_a_batch_answered_short_fails_its_rows_in_place_and_no_other_row_moves():
    """A model call that returns fewer answers than rows (or a None) cannot say whose answer is whose: that batch's
    rows get an error where they stand (its adapters' rows run again apart first), every other row keeps its own."""
    from tunelab.evaluate.mixbatch import RowKey

    def run_rows(rows: list[Row], stop_ids: list[int]) -> list:
        answers = [Generation([len(r.prompt_ids)], r.adapter, False) for r in rows]
        return answers[:-1] if any(r.adapter == "short" for r in rows) else answers

    requests = [("a", 5), ("short", 4), ("b", 3), ("short", 2), ("a", 1)]
    rows = [Row(list(range(n)), a, RowKey(4, adapter=a, stop_ids=(0,))) for a, n in requests]
    out = MixedBatcher(run_rows, 2).generate_now(rows)
    assert len(out) == len(rows)
    for (adapter, n), got in zip(requests, out):
        if adapter == "short":
            assert isinstance(got, RuntimeError) and "answers for a batch of" in str(got), got
        else:
            assert isinstance(got, Generation) and (got.text, got.new_ids) == (adapter, [n])


def test_adapter_kinds_peft_cannot_mix_are_named():
    lora = {"peft_type": "LORA", "r": 8, "modules_to_save": MODULES}
    assert adapter_blocker(lora) is None
    assert adapter_blocker({**lora, "peft_type": "IA3"}) == "a IA3 adapter: PEFT mixes adapters in one batch for LoRA only"
    assert adapter_blocker({**lora, "use_dora": True}).startswith("a LoRA variant (use_dora=True)")
    assert adapter_blocker({**lora, "init_lora_weights": "mica"}).startswith("a LoRA variant (init_lora_weights='mica')")
    assert adapter_blocker({**lora, "target_parameters": ["w"]}).startswith("LoRA on parameters (target_parameters)")
    assert adapter_blocker({**lora, "trainable_token_indices": [1]}).startswith("trainable tokens")


def work(tmp_path: Path, model: Path, name: str, adapter: Path | None, dtype: str = "float32") -> TargetWork:
    cfg = RunConfig(name=name, kind="finetune" if adapter else "control", experiment="x", experiment_dir=str(tmp_path),
                    model={"name": "tiny", "path": str(model)}, dataset={"name": "d", "path": str(tmp_path / "d.json")},
                    training={"dtype": dtype} if adapter else None)
    return TargetWork(cfg, Target("epoch_0" if adapter else "base", 0 if adapter else None, model, adapter), ())


def test_targets_of_one_base_and_tokenizer_group_and_the_rest_go_alone_with_why(tiny_model, adapters, tmp_path):
    from transformers import AutoTokenizer

    dora = make_adapter(tiny_model, tmp_path / "dora", 5, modules=[], use_dora=True)
    own_modules = make_adapter(tiny_model, tmp_path / "lm_head_only", 6, modules=["lm_head"])
    retok = shutil.copytree(adapters[0], tmp_path / "retok")
    tok = AutoTokenizer.from_pretrained(retok)
    tok.add_tokens(["<extra>"])
    tok.save_pretrained(retok)
    bf16 = work(tmp_path, tiny_model, "half", adapters[1], dtype="bfloat16")
    pending = [work(tmp_path, tiny_model, "r1", adapters[0]), work(tmp_path, tiny_model, "ctl", None), bf16,
               work(tmp_path, tiny_model, "dora", dora), work(tmp_path, tiny_model, "r2", adapters[1]),
               work(tmp_path, tiny_model, "mts", own_modules), work(tmp_path, tiny_model, "tok", retok)]
    groups, single = group_targets(pending, "cpu")
    assert [[w.cfg.name for w in g.members] for g in groups] == [["ctl", "r1", "r2"]]  # the control joins them
    assert groups[0].resize and groups[0].dtype == torch.float32
    why = {a.work.cfg.name: a.reason for a in single}
    assert why["dora"].startswith("a LoRA variant (use_dora=True)")
    assert why["tok"] == "its tokenizer differs from the other targets' of this base model"
    assert why["half"] == "its dtype (torch.bfloat16) differs from the other targets' (torch.float32)"
    assert why["mts"] == "its adapter's modules_to_save ['lm_head'] differ from the others' ['embed_tokens', 'lm_head']"
    assert set(why) == {"dora", "tok", "half", "mts"}
    [(solo, reason)] = [(a.work.cfg.name, a.reason) for a in group_targets(pending[:1], "cpu")[1]]
    assert (solo, reason) == ("r1", "nothing to share: the only target of its base model")


def test_adapters_are_chunked_by_their_bytes_and_counted_as_float32(adapters, tmp_path):
    from safetensors import safe_open

    with safe_open(str(adapters[0] / "adapter_model.safetensors"), "pt") as f:
        numel = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118 (safe_open is not iterable)
    assert adapter_bytes(adapters[0]) == 4 * numel
    broken = shutil.copytree(adapters[0], tmp_path / "broken")
    (broken / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    assert adapter_bytes(broken) == 4 * 22  # unreadable: 4 × its size; its load fails and says why
    assert chunks([3, 3, 3, 5, 1], 6, most=8) == [[0, 1], [2], [3, 4]]
    assert chunks([9, 2], 6, most=8) == [[0], [1]]  # one too large for the room still gets a chunk of its own
    assert chunks([1] * 5, 6, most=2) == [[0, 1], [2, 3], [4]]  # at most `most` at once, whatever the room
    assert chunks([], 6, most=8) == []
    assert json.loads((adapters[0] / "adapter_config.json").read_text())["modules_to_save"] == MODULES


def test_waves_hold_whole_targets_up_to_their_samples(tmp_path, tiny_model):
    from inspect_ai import Task
    from inspect_ai.dataset import Sample

    from tunelab.evaluate.runner import PreparedTask
    from tunelab.evaluate.waves import wave_items
    from tunelab.evaluate.work import WorkItem
    from tunelab.spec import TaskSpec

    items, prepared = [], {}
    for target in ("r1", "r2", "r3"):
        for task, n, epochs in (("a", 5, 1), ("b", 3, 2)):  # 5 + 3 × 2 = 11 samples a target
            item = WorkItem(work(tmp_path, tiny_model, target, tmp_path).cfg, Target("epoch_0", 0, tiny_model, None),
                            TaskSpec(name=task, builtin="exact_match"))
            items.append(item)
            prepared[item.key] = PreparedTask(Task(dataset=[Sample(input="x", id=i) for i in range(n)], epochs=epochs),
                                              None, None, "greedy")
    names = [[(i.cfg.name, i.spec.name) for i in wave] for wave in wave_items(items, prepared, 20)]
    assert names == [[("r1", "a"), ("r1", "b"), ("r2", "a"), ("r2", "b")], [("r3", "a"), ("r3", "b")]]
    assert len(wave_items(items, prepared, 1)) == 3  # a wave holds at least one whole target


def test_weights_serving_one_adapter_never_mix_and_a_dora_beside_the_base_is_refused(tiny_model, tmp_path):
    """A pass of one (a target alone, evaluate/passes.py) serves one adapter: every batch takes PEFT's plain path,
    so even an adapter PEFT mixes with nothing is not refused; beside the base it is."""
    dora = make_adapter(tiny_model, tmp_path / "dora", 5, modules=[], use_dora=True)
    shared = SharedWeights(tiny_model, tiny_model, torch.float32, "cpu", resize=True)
    try:
        assert shared.attach([dora]) == {} and shared.mixing_refused() is None
        shared.serve_base()
        assert (shared.mixing_refused() or "").startswith("PEFT cannot mix these adapters in one batch")
    finally:
        shared.release()
