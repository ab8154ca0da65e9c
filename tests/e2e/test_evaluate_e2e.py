"""Real inspect-ai evaluations of a tiny model: control, trained adapter, parity, batching, idempotency.

The adapter is trained here with plain torch + peft (not tunelab.train), so a perfect score can
only come from the evaluator loading the adapter correctly: a random base model never gets it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tunelab.data.formatting import prompt_format_of
from tunelab.evaluate import evaluate_run, load_samples, read_scores
from tunelab.evaluate.provider import TunelabModelAPI
from tunelab.runconfig import RunConfig

pytestmark = pytest.mark.slow

WORDS = ["apple", "banana", "cherry", "delta", "echo", "forest", "guitar", "harbor"]
SCORE_KEYS = {"run", "kind", "label", "epoch", "task", "split", "metric", "score", "samples", "correct", "log",
              "model_path", "adapter_path", "max_tokens", "duration_s", "evaluated_at"}


def make_cfg(root: Path, model: Path, kind: str = "finetune", name: str = "r1",
             target=str.capitalize, **overrides) -> RunConfig:
    data = root / f"data_{target.__name__}.json"
    rows = [{"input": w, "output": target(w)} for w in WORDS]
    data.write_text(json.dumps({"train": rows, "validation": rows, "test": rows}))
    fields = dict(
        name=name, kind=kind, experiment="x", experiment_dir=str(root),
        model={"name": "tiny", "path": str(model)}, dataset={"name": "caps", "path": str(data)},
        prompt="Capitalize: {input}", training={} if kind == "finetune" else None, eval={"max_tokens": 10},
    )
    return RunConfig(**{**fields, **overrides})


def train_adapter(cfg: RunConfig, out_dir: Path, steps: int = 200) -> Path:
    """Overfit a LoRA adapter (+ full embed/lm_head) on WORDS with the shared prompt format."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(cfg.model.path)
    model = AutoModelForCausalLM.from_pretrained(cfg.model.path, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                             modules_to_save=["embed_tokens", "lm_head"], task_type="CAUSAL_LM"))
    fmt = prompt_format_of(cfg)
    examples = [fmt.encode_example(w, w.capitalize(), tok) for w in WORDS]
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        mask[i, :n] = 1
        labels[i, :n] = torch.tensor([t if m else -100 for t, m in zip(e["input_ids"], e["completion_mask"])])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < 0.05, loss.item()
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model) -> tuple[Path, Path]:
    """(experiment dir, adapter dir) with one adapter overfit on WORDS."""
    root = tmp_path_factory.mktemp("evalexp")
    adapter = train_adapter(make_cfg(root, tiny_model), root / "adapter")
    return root, adapter


def test_control_of_random_base_model(tmp_path, tiny_model):
    cfg = make_cfg(tmp_path, tiny_model, kind="control", name="tiny_base")
    [scores] = evaluate_run(cfg)
    out = cfg.run_dir / "eval" / "base"
    assert set(scores) == SCORE_KEYS
    assert scores["label"] == "base" and scores["epoch"] is None and scores["adapter_path"] is None
    assert scores["samples"] == len(WORDS) and 0.0 <= scores["score"] <= 1.0
    assert scores["score"] == scores["correct"] / scores["samples"]  # a random model: almost surely 0
    assert json.loads((out / "scores.json").read_text()) == scores
    assert (out / scores["log"]).is_file() and scores["log"].endswith(".eval")
    rows = load_samples(out / scores["log"], 3)
    assert [(r.input, r.target) for r in rows] == [(w, w.capitalize()) for w in WORDS[:3]]
    assert all(isinstance(r.completion, str) and r.score in (0.0, 1.0) for r in rows)


def test_prompt_parity_with_training(tmp_path, tiny_model):
    """Both directly and through inspect: the model sees exactly PromptFormat.encode_prompt's ids."""
    from inspect_ai.log import read_eval_log
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    for chat in ("auto", "never"):
        cfg = make_cfg(tmp_path, tiny_model, kind="control", name=f"ctl_{chat}", chat_template=chat,
                       system_prompt="Answer with one word.", eval={"max_tokens": 4, "limit": 3})
        fmt = prompt_format_of(cfg)
        api = TunelabModelAPI("tunelab/x", base_path=str(tiny_model), prompt_template=cfg.prompt,
                              chat_template=chat, system_prompt=cfg.system_prompt)
        assert api.prompt_ids("Apple pie!") == fmt.encode_prompt("Apple pie!", tok)
        api.close()
        [scores] = evaluate_run(cfg)
        assert scores["samples"] == 3  # limit honoured
        log = read_eval_log(str(cfg.run_dir / "eval" / "base" / scores["log"]))
        for sample in log.samples:
            assert sample.output.metadata["prompt_ids"] == fmt.encode_prompt(sample.input, tok)
            assert sample.output.usage.output_tokens <= 4  # eval.max_tokens reaches generate()
    assert "<|system|>Answer with one word." in sample.output.metadata["prompt"] or chat == "never"


def test_batched_generation_equals_unbatched(tmp_path, tiny_model):
    """Left padding must not change a greedy answer; junk from a random model is a sharp check."""
    completions = []
    for bs in (1, 3):
        cfg = make_cfg(tmp_path, tiny_model, kind="control", name=f"bs{bs}")
        [scores] = evaluate_run(cfg, batch_size=bs)
        rows = load_samples(cfg.run_dir / "eval" / "base" / scores["log"])
        completions.append([r.completion for r in rows])
    assert completions[0] == completions[1]
    assert len(set(completions[0])) > 1  # prompts really differ


def test_decoding_is_greedy_even_if_the_model_defaults_to_sampling(tmp_path, tiny_model):
    import torch

    base = shutil.copytree(tiny_model, tmp_path / "sampling_model")
    gen = json.loads((base / "generation_config.json").read_text())
    (base / "generation_config.json").write_text(json.dumps({**gen, "do_sample": True, "temperature": 2.0}))
    api = TunelabModelAPI("tunelab/x", base_path=str(base))
    prompts = [api.prompt_ids(w) for w in WORDS[:3]]
    outs = set()
    for seed in range(3):
        torch.manual_seed(seed)
        outs.add(tuple(g.text for g in api.generate_batch(prompts, 8)))
    assert len(outs) == 1


def test_trained_adapter_scores_perfectly(trained, tiny_model):
    root, adapter = trained
    cfg = make_cfg(root, tiny_model, name="taught")
    shutil.copytree(adapter, cfg.run_dir / "checkpoints" / "epoch_0")
    [scores] = evaluate_run(cfg)
    assert scores["label"] == "epoch_0" and scores["epoch"] == 0
    assert scores["adapter_path"] == str(cfg.run_dir / "checkpoints" / "epoch_0")
    assert scores["score"] >= 0.9, load_samples(cfg.run_dir / "eval" / "epoch_0" / scores["log"])
    rows = load_samples(cfg.run_dir / "eval" / "epoch_0" / scores["log"], 2)
    assert rows[0].completion == "Apple" and rows[0].score == 1.0

    # Case is the whole answer: the same model against lowercase targets scores nothing...
    lower = make_cfg(root, tiny_model, name="taught_lower", target=str.lower)
    shutil.copytree(adapter, lower.run_dir / "checkpoints" / "epoch_0")
    assert evaluate_run(lower)[0]["score"] == 0.0
    # ...while 'includes' accepts the answer inside a longer completion.
    inc = make_cfg(root, tiny_model, name="taught_inc", eval={"task": "includes", "max_tokens": 10})
    shutil.copytree(adapter, inc.run_dir / "checkpoints" / "epoch_0")
    assert evaluate_run(inc)[0]["score"] >= 0.9


def test_skip_force_and_all_epochs(trained, tiny_model):
    root, adapter = trained
    cfg = make_cfg(root, tiny_model, name="multi", eval={"max_tokens": 10, "limit": 4})
    for epoch in (0, 1):
        shutil.copytree(adapter, cfg.run_dir / "checkpoints" / f"epoch_{epoch}")
    (cfg.run_dir / "checkpoints" / "epoch_2").mkdir()  # a checkpoint still being written

    [last] = evaluate_run(cfg)  # eval.epochs: last -> epoch_1
    assert last["label"] == "epoch_1"
    scores_file = cfg.run_dir / "eval" / "epoch_1" / "scores.json"
    mtime = scores_file.stat().st_mtime_ns

    both = evaluate_run(cfg, epochs="all")
    assert [s["epoch"] for s in both] == [0, 1]
    assert both[1] == last and scores_file.stat().st_mtime_ns == mtime  # skipped: already scored
    assert [s["label"] for s in read_scores(cfg.run_dir)] == ["epoch_0", "epoch_1"]

    [again] = evaluate_run(cfg, epochs=[1], force=True)
    assert again["evaluated_at"] >= last["evaluated_at"] and scores_file.stat().st_mtime_ns != mtime
    assert sorted(p.name for p in scores_file.parent.iterdir()) == sorted([again["log"], "scores.json"])

    # An interrupted evaluation (a log but no scores.json) is redone, not trusted.
    scores_file.unlink()
    [redone] = evaluate_run(cfg)
    assert redone["label"] == "epoch_1" and scores_file.is_file()
