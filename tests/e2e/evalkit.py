"""Helpers of the evaluation e2e tests: run configs on a tiny word dataset, and a LoRA adapter overfit
on it with plain torch + peft (not tunelab.train), so a perfect score can only come from the evaluator
loading the adapter and formatting prompts exactly as training did."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tunelab.data.formatting import prompt_format_of
from tunelab.data.splits import load_data
from tunelab.rundir.config import RunConfig

WORDS = ["apple", "banana", "cherry", "delta", "echo", "forest", "guitar", "harbor"]


def make_cfg(root: Path, model: Path, kind: str = "finetune", name: str = "r1", target=str.capitalize,
             **overrides) -> RunConfig:
    data = root / f"data_{target.__name__}.json"
    rows = [{"input": w, "output": target(w)} for w in WORDS]
    data.write_text(json.dumps({"train": rows, "validation": rows, "test": rows}))
    fields = dict(
        name=name, kind=kind, experiment="x", experiment_dir=str(root),
        model={"name": "tiny", "path": str(model)}, dataset={"name": "caps", "path": str(data)},
        prompt="Capitalize: {input}", training={} if kind == "finetune" else None, eval={"max_tokens": 10},
    )
    return RunConfig(**{**fields, **overrides})


def examples_of(cfg: RunConfig, split: str = "test"):
    data = load_data(cfg.dataset, cfg.experiment_dir)
    return data.examples(split, data.reader(cfg.prompt, cfg.system_prompt))


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
    encoded = [fmt.encode_example(e, tok) for e in examples_of(cfg, "train")]
    width = max(len(e["input_ids"]) for e in encoded)
    ids = torch.full((len(encoded), width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, e in enumerate(encoded):
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


def with_checkpoint(cfg: RunConfig, adapter: Path, epochs=(0,)) -> RunConfig:
    for e in epochs:
        shutil.copytree(adapter, cfg.run_dir / "checkpoints" / f"epoch_{e}")
    return cfg
