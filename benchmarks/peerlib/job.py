"""The one LoRA job every tool runs, and its inputs written once in forms every tool reads.

Same model directory, same rows, same system message, same chat template (the model directory's own, rendered by
each tool from tokenizer_config.json), LoRA r16 on q_proj,v_proj, alpha 32, no dropout, max_seq_len 64,
micro-batch 8, 1 epoch, lr 2e-3 cosine without warm-up, fp32, seed 0, no packing, no checkpoints but the final
adapter, the same OMP thread count."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

SYSTEM = "You capitalize words."
PROMPT = "Capitalize the word: {input}"
MODELS = ("tiny", "smollm2")
WORDS = {"tiny": 2000, "smollm2": 300}  # the demo's counts (demo.py: NUM_WORDS, SMOLLM2_WORDS)
TINY_LAYERS, TINY_HIDDEN, TINY_SEED = 4, 256, 1  # the demo's tiny-4x256


@dataclass(frozen=True)
class Job:
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    max_seq_len: int = 64
    micro_batch: int = 8
    epochs: int = 1
    learning_rate: float = 2e-3
    scheduler: str = "cosine"
    warmup_steps: int = 0
    seed: int = 0
    dtype: str = "float32"
    threads: int = 2
    max_new_tokens: int = 8  # scoring


@dataclass(frozen=True)
class Inputs:
    """What prepare() wrote: the model, the rows (each split as chat JSONL), and the same rows in other shapes."""

    model: str  # "tiny" | "smollm2"
    model_dir: Path
    data_dir: Path
    splits: dict[str, int] = field(default_factory=dict)  # rows per split

    def jsonl(self, split: str) -> Path:
        """{"messages": [system, user, assistant]} per line: OpenAI/sharegpt shape."""
        return self.data_dir / f"{split}.jsonl"

    def alpaca(self, split: str) -> Path:
        """[{"instruction", "input": "", "output", "system"}]: the prompt/response shape some tools want."""
        return self.data_dir / f"{split}.alpaca.json"

    def rows(self, split: str) -> list[dict]:
        return [json.loads(line) for line in self.jsonl(split).read_text().splitlines() if line.strip()]


def messages(word: str, answer: str | None) -> list[dict]:
    out = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT.format(input=word)}]
    if answer is not None:
        out.append({"role": "assistant", "content": answer})
    return out


def prepare(out: Path, model: str, words: int | None = None) -> Inputs:
    """Build the model and the capitalization rows under out/ (once); return where they are. `words`: fewer rows
    than the demo's (the smoke)."""
    from tunelab.data.capitalization import make_capitalization_dataset
    from tunelab.models.check import check_model_dir
    from tunelab.errors import TunelabError

    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, not {model!r}")
    model_dir = out / "models" / model
    try:
        check_model_dir(model_dir)
    except TunelabError:
        if model == "tiny":
            from tunelab.models.tiny import build_tiny_model
            build_tiny_model(model_dir, layers=TINY_LAYERS, hidden=TINY_HIDDEN, seed=TINY_SEED)
        else:
            from tunelab.models.smollm2 import build_smollm2
            # float32 on disk: a tool that takes the dtype from config.json (LLaMA-Factory trains a bfloat16
            # checkpoint in bfloat16 whatever bf16: says) trains the same fp32 job as the others
            build_smollm2(model_dir, dtype="float32")
    words = words or WORDS[model]
    data_dir = out / "data" / (model if words == WORDS[model] else f"{model}-{words}")
    data_dir.mkdir(parents=True, exist_ok=True)
    source = make_capitalization_dataset(5, words, data_dir, 0.8, 0)
    data = json.loads(source.read_text())
    splits = {}
    for split in ("train", "validation", "test"):
        rows = data[split]
        splits[split] = len(rows)
        (data_dir / f"{split}.jsonl").write_text(
            "".join(json.dumps({"messages": messages(r["input"], r["output"])}) + "\n" for r in rows))
        (data_dir / f"{split}.alpaca.json").write_text(json.dumps(
            [{"instruction": PROMPT.format(input=r["input"]), "input": "", "output": r["output"], "system": SYSTEM}
             for r in rows], indent=0))
    return Inputs(model=model, model_dir=model_dir, data_dir=data_dir, splits=splits)


def training_tokens(inputs: Inputs, job: Job) -> int:
    """The one token count every tool's tokens/s is computed from: each training row rendered by the model's own
    chat template, tokenized, cut at max_seq_len, summed (padding not counted)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(inputs.model_dir)
    total = 0
    for row in inputs.rows("train"):
        text = str(tok.apply_chat_template(row["messages"], tokenize=False))
        total += min(len(tok(text, add_special_tokens=False)["input_ids"]), job.max_seq_len)
    return total * job.epochs
