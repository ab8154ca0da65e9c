"""Tiny Llama-architecture base models, built offline and deterministically from a seed, in real HF format, so every
path that loads a model from disk runs on a CPU in seconds. The tokenizer is byte-level without merges: any word is
representable and capitalization is learnable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from tunelab.compat import quiet_hf_progress_bars
from tunelab.errors import TunelabError

SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eot|>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|eot|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def vocabulary(size: int | None = None, bos_id: int | None = None, eos_id: int | None = None) -> dict[str, int]:
    """Token → id: chat specials, the 256 bytes and unreachable fillers up to `size`; bos and end-of-turn at `bos_id` /
    `eos_id` when given (a real model's ids). Without ids or size: the tiny models' layout."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    size = size or len(SPECIAL_TOKENS) + len(alphabet)
    if size < len(SPECIAL_TOKENS) + len(alphabet):
        raise TunelabError(f"a vocabulary of {size} tokens cannot hold the 256 bytes and "
                           f"{len(SPECIAL_TOKENS)} chat tokens", field="vocab_size")
    fixed = {i: tok for i, tok in ((bos_id, "<|bos|>"), (eos_id, "<|eot|>")) if i is not None}
    if any(not 0 <= i < size for i in fixed):
        raise TunelabError(f"bos/eos token ids {sorted(fixed)} lie outside the vocabulary of {size}",
                           field="vocab_size")
    slots: list[str | None] = [None] * size
    for i, tok in fixed.items():
        slots[i] = tok
    start = max(fixed) + 1 if fixed else 0
    order = list(range(start, size)) + list(range(start))
    free = iter(i for i in order if slots[i] is None)
    shared = bos_id is not None and bos_id == eos_id  # one token opens and ends (Qwen's <|endoftext|>)
    for tok in SPECIAL_TOKENS:
        if tok not in slots and not (shared and tok == "<|bos|>"):
            slots[next(free)] = tok
    rest = iter(alphabet + [f"<|filler_{i}|>" for i in range(size)])
    return {tok if tok is not None else next(rest): i for i, tok in enumerate(slots)}


def byte_level_tokenizer(vocab: dict[str, int], specials: list[str], **fast: Any) -> Any:
    """A fast tokenizer over `vocab`: one token per byte (no merges) and `specials` whole; `fast` names its special
    tokens, chat template and length. The one construction the tiny, tiny-VL and random models share."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **fast)


def build_tokenizer(size: int | None = None, bos_id: int | None = None, eos_id: int | None = None,
                    model_max_length: int = 2048, unk_token: str | None = None):
    """Byte-level tokenizer: chat specials + 256 bytes (+ fillers up to `size`), no merges; `unk_token` is named anyway
    so tokenizer classes add none of their own."""
    vocab = vocabulary(size, bos_id, eos_id)
    return byte_level_tokenizer(vocab, [t for t in SPECIAL_TOKENS if t in vocab],
                                bos_token="<|bos|>" if "<|bos|>" in vocab else "<|eot|>", eos_token="<|eot|>",
                                pad_token="<|pad|>", unk_token=unk_token, chat_template=CHAT_TEMPLATE,
                                model_max_length=model_max_length)


def build_tiny_model(
    out_dir: str | Path, layers: int = 2, hidden: int = 128, seed: int = 0, max_positions: int = 512
) -> Path:
    """Write a random-init LlamaForCausalLM + tokenizer to out_dir; same seed -> identical weights."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    if layers < 1:
        raise TunelabError("must be at least 1", field="--layers")
    if hidden < 32 or hidden % 32:
        raise TunelabError("must be a multiple of 32, at least 32", field="--hidden")

    quiet_hf_progress_bars()
    out = Path(out_dir)
    tokenizer = build_tokenizer()
    heads = max(1, hidden // 64)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    meta = {"builder": "tunelab.models.tiny", "layers": layers, "hidden": hidden, "seed": seed,
            "parameters": sum(p.numel() for p in model.parameters())}
    (out / "tunelab_tiny.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out
