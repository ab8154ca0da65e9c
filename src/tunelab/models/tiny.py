"""Tiny Llama-architecture base models, built offline and deterministically from a seed.

Real HF format (config.json, safetensors, tokenizer with chat template), so every code path that
loads Llama-3.2 from disk is exercised on CPU in seconds. The tokenizer is byte-level with no
merges: one token per byte, so any word is representable and capitalization is learnable.
"""

from __future__ import annotations

import json
from pathlib import Path

from tunelab.errors import TunelabError

SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eot|>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|eot|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tokenizer():
    """Byte-level tokenizer: 256 byte symbols + chat special tokens, no merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for sym in alphabet:
        vocab[sym] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|eot|>",
        pad_token="<|pad|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
    )


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
    from tunelab.compat import quiet_hf_progress_bars

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
