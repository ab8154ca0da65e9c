"""Real inspect-ai evaluations of a tiny model: controls, a trained adapter (evalkit), eval-only
checkpoints, prompt parity, batching, the choice built-in's probabilities, and skip/force."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from evalkit import WORDS, examples_of, make_cfg, with_checkpoint

from tunelab.data.formatting import prompt_format_of
from tunelab.evaluate import evaluate_run, load_samples, read_scores

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(trained_adapter) -> tuple[Path, Path]:
    return trained_adapter


def test_control_of_random_base_model(tmp_path, tiny_model):
    cfg = make_cfg(tmp_path, tiny_model, kind="control", name="tiny_base")
    [scores] = evaluate_run(cfg)
    out = cfg.run_dir / "eval" / "base" / "exact_match"
    assert (scores.label, scores.epoch, scores.adapter_path, scores.task) == ("base", None, None, "exact_match")
    assert scores.samples == len(WORDS) and scores.primary_metric == "accuracy"
    rows = load_samples(out / scores.log)
    assert scores.score == scores.metrics["accuracy"] == sum(r.value == "C" for r in rows) / len(WORDS)
    assert json.loads((out / "scores.json").read_text()) == scores.model_dump(mode="json")
    assert [r.target for r in rows[:3]] == [w.capitalize() for w in WORDS[:3]]
    assert rows[0].input == "Capitalize: apple"


def _fed_sequences(batch):
    """(input_ids, labels) of each example in a collated batch: padded rows, or padding-free packed
    sequences cut where position_ids restart at 0."""
    if "attention_mask" in batch:
        for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
            n = int(mask.sum())
            yield ids[:n].tolist(), labels[:n].tolist()
        return
    ids, labels, pos = batch["input_ids"][0].tolist(), batch["labels"][0].tolist(), batch["position_ids"][0].tolist()
    starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
    for a, b in zip(starts, starts[1:]):
        yield ids[a:b], labels[a:b]


def _trainer_prompts(cfg) -> dict[str, list[int]]:
    """answer -> prompt tokens (the loss-free prefix) of every sequence the trainer's dataloader feeds."""
    from tunelab.train.trainer import build_trainer

    trainer = build_trainer(cfg)[0]
    tok = trainer.processing_class
    prompts: dict[str, list[int]] = {}
    for batch in trainer.get_train_dataloader():
        for ids, labels in _fed_sequences(batch):
            start = next(i for i, lab in enumerate(labels) if lab != -100)
            answer = tok.decode([t for t, lab in zip(ids, labels) if lab != -100], skip_special_tokens=True).strip()
            assert prompts.setdefault(answer, ids[:start]) == ids[:start]
    return prompts


@pytest.mark.parametrize("chat", ["auto", "never"])
def test_prompt_parity_with_training(tmp_path, tiny_model, chat):
    """The evaluator's prompt tokens (recorded by the tunelab provider in the .eval log) are exactly the
    loss-free prefix of the sequence the trainer fed for the same example, after TRL's processing,
    unpacked and BFD-packed."""
    from inspect_ai.log import read_eval_log

    common = dict(chat_template=chat, system_prompt="Answer with one word.")
    cfg = make_cfg(tmp_path, tiny_model, kind="control", name=f"ctl_{chat}", eval={"max_tokens": 4}, **common)
    [scores] = evaluate_run(cfg)
    assert scores.samples == len(WORDS)
    log = read_eval_log(str(cfg.run_dir / "eval" / "base" / "exact_match" / scores.log))
    evaluated = {s.target: s.output.metadata["prompt_ids"] for s in log.samples}
    assert all(s.output.usage.output_tokens <= 4 for s in log.samples)  # eval.max_tokens reaches generate()
    if chat == "auto":
        assert "<|system|>Answer with one word." in log.samples[0].output.metadata["prompt"]
    for packing in (False, True):
        train_cfg = make_cfg(tmp_path, tiny_model, name=f"r_{chat}_{packing}", **common,
                             training={"packing": packing, "max_seq_len": 128, "batch_size": 4})
        assert _trainer_prompts(train_cfg) == evaluated, f"packing={packing}"


def test_batched_generation_equals_unbatched(tmp_path, tiny_model):
    """Left padding must not change a greedy answer; junk from a random model is a sharp check."""
    completions = []
    for bs in (1, 3):
        cfg = make_cfg(tmp_path, tiny_model, kind="control", name=f"bs{bs}")
        [scores] = evaluate_run(cfg, batch_size=bs)
        completions.append([r.completion for r in load_samples(cfg.run_dir / "eval" / "base" / "exact_match" /
                                                                scores.log)])
    assert completions[0] == completions[1]
    assert len(set(completions[0])) > 1  # prompts really differ


def test_decoding_is_greedy_even_if_the_model_defaults_to_sampling(tmp_path, tiny_model):
    import torch

    from tunelab.evaluate.hf import LocalLM, load_model

    base = shutil.copytree(tiny_model, tmp_path / "sampling_model")
    gen = json.loads((base / "generation_config.json").read_text())
    (base / "generation_config.json").write_text(json.dumps({**gen, "do_sample": True, "temperature": 2.0}))
    lm = LocalLM(*load_model(base, None, torch.float32, "cpu"), "cpu")
    prompts = [lm.tokenizer(w)["input_ids"] for w in WORDS[:3]]
    outs = set()
    for seed in range(3):
        torch.manual_seed(seed)
        outs.add(tuple(g.text for g in lm.generate_batch(prompts, 8, [lm.tokenizer.eos_token_id])))
    assert len(outs) == 1


def test_trained_adapter_scores_perfectly_and_case_matters(trained, tiny_model):
    root, adapter = trained
    cfg = with_checkpoint(make_cfg(root, tiny_model, name="taught"), adapter)
    [scores] = evaluate_run(cfg)
    assert (scores.label, scores.epoch) == ("epoch_0", 0)
    assert scores.adapter_path == str(cfg.run_dir / "checkpoints" / "epoch_0")
    rows = load_samples(cfg.run_dir / "eval" / "epoch_0" / "exact_match" / scores.log)
    assert scores.score >= 0.9, rows
    assert rows[0].completion == "Apple" and rows[0].value == "C"
    # Case is the whole answer: the same model against lowercase targets scores nothing...
    lower = with_checkpoint(make_cfg(root, tiny_model, name="taught_lower", target=str.lower), adapter)
    assert evaluate_run(lower)[0].score == 0.0
    # ...while 'includes' accepts the answer inside a longer completion.
    inc = with_checkpoint(make_cfg(root, tiny_model, name="taught_inc", eval={"task": "includes", "max_tokens": 10}),
                          adapter)
    assert evaluate_run(inc)[0].score >= 0.9


def _option_logprob(model, tok, fmt, example, option: str) -> float:
    """Independent: log P(option + its end-of-turn | prompt) from one plain forward pass."""
    import torch

    from tunelab.data.conversation import Example, Message

    prompt = fmt.encode_prompt(example.prompt, tok)
    full = fmt.encode_example(Example((*example.prompt, Message("assistant", option))), tok)["input_ids"]
    with torch.no_grad():
        logps = model(input_ids=torch.tensor([full])).logits[0].float().log_softmax(-1)
    return sum(float(logps[i - 1, full[i]]) for i in range(len(prompt), len(full)))


def test_choice_probabilities_and_calibration(trained, tiny_model):
    import numpy as np
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.evaluate import metrics as m

    root, adapter = trained
    cfg = with_checkpoint(make_cfg(root, tiny_model, name="chooser", eval={
        "tasks": [{"name": "pick", "builtin": "choice", "limit": 4}]}), adapter)
    [scores] = evaluate_run(cfg)
    assert set(scores.metrics) == {"accuracy", "balanced_accuracy", "macro_f1", "ece", "brier"}
    rows = load_samples(cfg.run_dir / "eval" / "epoch_0" / "pick" / scores.log)
    options = sorted(w.capitalize() for w in WORDS)  # the distinct answers of the split
    tok = AutoTokenizer.from_pretrained(adapter)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
                                      str(adapter)).eval()
    fmt = prompt_format_of(cfg)
    for row, example in zip(rows, examples_of(cfg)[:4]):
        logps = np.array([_option_logprob(model, tok, fmt, example, o) for o in options])
        expected = np.exp(logps - logps.max()) / np.exp(logps - logps.max()).sum()
        got = np.array([row.metadata["probs"][o] for o in options])
        assert got == pytest.approx(expected, abs=1e-4)
        assert row.completion == options[int(expected.argmax())]
    probs = np.array([[r.metadata["probs"][o] for o in options] for r in rows])
    truth = [options.index(r.target) for r in rows]
    assert scores.metrics["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == truth))
    assert scores.metrics["accuracy"] >= 0.75  # the trained adapter knows these words
    onehot = np.eye(len(options))[truth]
    assert scores.metrics["brier"] == pytest.approx(float(((probs - onehot) ** 2).sum(1).mean()), abs=1e-6)
    assert scores.metrics["ece"] == pytest.approx(m.ece_of(probs, truth), abs=1e-6)


def test_eval_only_adapter_matches_the_same_checkpoint_of_a_run(trained, tiny_model):
    root, adapter = trained
    run = with_checkpoint(make_cfg(root, tiny_model, name="as_run", eval={"max_tokens": 10, "limit": 4}), adapter)
    shared = make_cfg(root, tiny_model, kind="eval_only", name="shared", checkpoint=str(adapter),
                      eval={"max_tokens": 10, "limit": 4})
    [a], [b] = evaluate_run(run), evaluate_run(shared)
    assert (b.label, b.kind, b.adapter_path) == ("checkpoint", "eval_only", str(adapter))
    comp = [[r.completion for r in load_samples(c.run_dir / "eval" / s.label / "exact_match" / s.log)]
            for c, s in ((run, a), (shared, b))]
    assert comp[0] == comp[1] and a.score == b.score and not math.isnan(a.score)


def test_skip_force_and_all_epochs(trained, tiny_model):
    root, adapter = trained
    cfg = with_checkpoint(make_cfg(root, tiny_model, name="multi", eval={"max_tokens": 10, "limit": 4}), adapter,
                          epochs=(0, 1))
    (cfg.run_dir / "checkpoints" / "epoch_2").mkdir()  # a checkpoint still being written

    [last] = evaluate_run(cfg)  # eval.epochs: last -> epoch_1
    assert last.label == "epoch_1"
    scores_file = cfg.run_dir / "eval" / "epoch_1" / "exact_match" / "scores.json"
    mtime = scores_file.stat().st_mtime_ns

    both = evaluate_run(cfg, epochs="all")
    assert [s.epoch for s in both] == [0, 1]
    assert both[1] == last and scores_file.stat().st_mtime_ns == mtime  # skipped: already scored
    assert [s.label for s in read_scores(cfg.run_dir)] == ["epoch_0", "epoch_1"]

    [again] = evaluate_run(cfg, epochs=[1], force=True)
    assert again.evaluated_at >= last.evaluated_at and scores_file.stat().st_mtime_ns != mtime
    assert sorted(p.name for p in scores_file.parent.iterdir()) == sorted([again.log, "scores.json"])

    # An interrupted evaluation (a log but no scores.json) is redone, not trusted.
    scores_file.unlink()
    [redone] = evaluate_run(cfg)
    assert redone.label == "epoch_1" and scores_file.is_file()
