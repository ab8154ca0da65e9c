"""The one LoRA job every tool runs, and its inputs written once in forms every tool reads.

Same model directory, same rows, same system message, same chat template (the model directory's own, rendered by
each tool from tokenizer_config.json), LoRA r16 on q_proj,v_proj, alpha 32, no dropout, max_seq_len 64,
micro-batch 8, 1 epoch, lr 2e-3 cosine without warm-up, fp32, seed 0, no packing, no checkpoints but the final
adapter, the same OMP thread count.

On a GPU (GPU_JOB, issue 52's item 6: benchmarks/gpu_truth.py's peer row): the same job in bfloat16 on a random-init
Llama-3.2-1B (`tunelab models random`: the real architecture, a byte-level tokenizer), on passages instead of single
words so that a step has work for a GPU (GPU_MODELS: each row a passage of ~PASSAGE_CHARS bytes to capitalize word
by word, one token a byte: ~2 × PASSAGE_CHARS tokens with the template), max_seq_len 512."""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass, field
from pathlib import Path

SYSTEM = "You capitalize words."
PROMPT = "Capitalize the word: {input}"
GPU_MODELS = {"llama-3.2-1b": "Llama-3.2-1B"}  # name: the catalog architecture `tunelab models random` builds
CPU_MODELS = ("tiny", "smollm2")
MODELS = (*CPU_MODELS, *GPU_MODELS)
WORDS = {"tiny": 2000, "smollm2": 300, "llama-3.2-1b": 1000}  # the demo's counts (demo.py); GPU: passages (rows)
PASSAGE_CHARS = 220  # bytes of one passage (a GPU row: the passage, then its capitalized copy)
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
    device: str = "cpu"  # "cuda": the GPU job (GPU_JOB)

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"


GPU_JOB = Job(max_seq_len=512, learning_rate=2e-4, dtype="bfloat16", device="cuda")


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


def passages(words: list[str], rows: int, seed: int) -> list[dict]:
    """`rows` passages of about PASSAGE_CHARS bytes drawn (seeded) from `words`, each with its capitalized copy."""
    rng = random.Random(seed)
    out = []
    for _ in range(rows):
        picked: list[str] = []
        while sum(len(w) + 1 for w in picked) < PASSAGE_CHARS:
            picked.append(rng.choice(words))
        out.append({"input": " ".join(picked), "output": " ".join(w.capitalize() for w in picked)})
    return out


def _build_model(model_dir: Path, model: str) -> None:
    if model == "tiny":
        from tunelab.models.tiny import build_tiny_model
        build_tiny_model(model_dir, layers=TINY_LAYERS, hidden=TINY_HIDDEN, seed=TINY_SEED)
    elif model == "smollm2":
        from tunelab.models.smollm2 import build_smollm2
        # float32 on disk: a tool that takes the dtype from config.json (LLaMA-Factory trains a bfloat16
        # checkpoint in bfloat16 whatever bf16: says) trains the same fp32 job as the others
        build_smollm2(model_dir, dtype="float32")
    else:  # a GPU model: the real architecture, random weights, in the dtype its job trains in (as the GPU kit's)
        from tunelab.models.random_init import build_random_model
        build_random_model(GPU_MODELS[model], model_dir, dtype="bfloat16", seed=0)


def prepare(out: Path, model: str, words: int | None = None, model_dir: Path | None = None) -> Inputs:
    """Build the model and the capitalization rows under out/ (once); return where they are. `words`: fewer rows
    than the demo's (the smoke). `model_dir`: an existing directory of the model (gpu_truth.py's cache)."""
    from tunelab.errors import TunelabError
    from tunelab.models.check import check_model_dir

    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, not {model!r}")
    model_dir = model_dir or out / "models" / model
    try:
        check_model_dir(model_dir)
    except TunelabError:
        _build_model(model_dir, model)
    words = words or WORDS[model]
    data_dir = out / "data" / (model if words == WORDS[model] else f"{model}-{words}")
    data_dir.mkdir(parents=True, exist_ok=True)
    if model in GPU_MODELS:  # passages of seeded five-letter words (no word list to carry to a GPU machine)
        rng = random.Random(0)
        pool = ["".join(rng.choice(string.ascii_lowercase) for _ in range(5)) for _ in range(2000)]
        rows = passages(pool, words, 0)
        n_train, n_val = int(words * 0.8), max(1, words // 10)
        data = {"train": rows[:n_train], "validation": rows[n_train:n_train + n_val], "test": rows[n_train + n_val:]}
    else:
        from tunelab.data.capitalization import make_capitalization_dataset

        data = json.loads(make_capitalization_dataset(5, words, data_dir, 0.8, 0).read_text())
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
