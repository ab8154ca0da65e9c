"""Offline stand-ins for the tokenizers of real chat-model families, with their REAL chat templates.

Each family gets a small byte-level BPE tokenizer (trained here, deterministically, on a fixed corpus)
wrapped in `PreTrainedTokenizerFast`, with that family's special tokens (bos/eos/pad and the turn markers
as added special tokens), its BOS behaviour, and its chat template read verbatim from
tests/fixtures/chat_templates/<family>.jinja. No hub access and no model weights.

Where each template came from (no hub here; copied from stored public material, byte for byte;
`TEMPLATE_SHA256` below pins the fixture files so an accidental edit is caught by a test):

- llama3.1.jinja: llama.cpp `models/templates/meta-llama-Llama-3.1-8B-Instruct.jinja` (llama.cpp keeps the
  templates of HF models there, fetched from the model repos by scripts/get_chat_template.py), read from a
  snapshot of the fork github.com/ye-NX/llama.cpp at commit 1eeb523c (file last changed by llama.cpp
  commit 8b576b6c, "Tool call support ... (#9639)"). Date line: "Today Date: " + date_string, default
  "26 Jul 2024".
- llama3.2.jinja: same place, `meta-llama-Llama-3.2-3B-Instruct.jinja`. Its sha256 equals the Git-LFS oid
  (5816fce1…, 3827 bytes) stored for the same path in github.com/Raudbjorn/ggml-llama.cpp. Date line uses
  strftime_now("%d %b %Y") when date_string is not given, i.e. today's date.
- qwen2.5.jinja: same place, `Qwen-Qwen2.5-7B-Instruct.jinja` (default system prompt "You are Qwen,
  created by Alibaba Cloud. You are a helpful assistant.").
- gemma2.jinja: same place, `google-gemma-2-2b-it.jinja`; sha256 equals the Git-LFS oid (ecd6ae51…,
  591 bytes) stored for that path in Raudbjorn/ggml-llama.cpp. Raises 'System role not supported'.
- mistral_v0.2.jinja: llama.cpp `tests/test-chat-template.cpp` (same snapshot), test case
  "mistralai/Mistral-7B-Instruct-v0.2 (mistralai 'v1' template with a system prompt)", the C string
  literal decoded. The same text appears JSON-escaped as the v0.2 tokenizer_config template in several
  other stored repositories.
- mistral_v0.3.jinja: llama.cpp `tests/test-chat-template.cpp`, case "Mistral-Large-Instruct-2407
  (mistralai 'v3' template ...)", decoded. The identical text is used as the template of
  "lmstudio-community/Mistral-7B-Instruct-v0.3-GGUF" in another stored repository (a llama-cpp-python
  preset table), i.e. the v3 template that Mistral-7B-Instruct-v0.3 ships. Note: it puts the system
  message into the LAST user turn.
- gemma3.jinja: github.com/ShishirPatil/gorilla (snapshot at 6ea57973),
  `berkeley-function-call-leaderboard/bfcl_eval/model_handler/local_inference/gemma.py`, whose docstring
  quotes the `"chat_template"` entry of the google/gemma-3 it tokenizer_config.json; JSON-decoded. Matches
  the copies quoted in other stored repositories (a zig test "gemma3 tokenizer_config chat template").
- smollm2.jinja: the `chat_template` of HuggingFaceTB/SmolLM2-135M-Instruct's tokenizer_config.json, as
  asserted verbatim by a stored Rust test that loads that file from the hub (and, identically, by stored
  tests that read `tokenizer.chat_template` from the SmolLM2-135M-Instruct GGUF and by a Go test).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent / "fixtures" / "chat_templates"

TEMPLATE_SHA256 = {
    "llama3.1": "e10ca381b1ccc5cf9db52e371f3b6651576caee0a630b452e2816b2d404d4b65",
    "llama3.2": "5816fce10444e03c2e9ee1ef8a4a1ea61ae7e69e438613f3b17b69d0426223a4",
    "qwen2.5": "cd8e9439f0570856fd70470bf8889ebd8b5d1107207f67a5efb46e342330527f",
    "mistral_v0.2": "796853172235ab3aaa4810013ddfe2eab481bda3306dad4f700c00d436eed596",
    "mistral_v0.3": "e16746b40344d6c5b5265988e0328a0bf7277be86f1c335156eae07e29c82826",
    "gemma2": "ecd6ae513fe103f0eb62e8ab5bfa8d0fe45c1074fa398b089c93a7e70c15cfd6",
    "gemma3": "7de1c58e208eda46e9c7f86397df37ec49883aeece39fb961e0a6b24088dd3c4",
    "smollm2": "872be49dbb638044ad01b60388f48d469ff2980e5f0dccdc22ec907db54d0788",
}


@dataclass(frozen=True)
class Family:
    """What a family's real tokenizer looks like, as far as prompt formatting can tell."""

    name: str
    eos: str
    specials: tuple[str, ...]  # every added special token (bos/eos/pad included), in id order
    bos: str | None = None  # the bos_token attribute
    add_bos: bool = False  # whether tokenizer(text) (add_special_tokens=True) prepends bos
    pad: str | None = None

    @property
    def template(self) -> str:
        return (TEMPLATES / f"{self.name}.jinja").read_text(encoding="utf-8")


_LLAMA3 = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
           "<|eom_id|>", "<|python_tag|>", "<|finetune_right_pad_id|>")
_CHATML_QWEN = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_CHATML_SMOL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_MISTRAL = ("<unk>", "<s>", "</s>", "[INST]", "[/INST]")
_GEMMA = ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>")

# Special tokens and BOS behaviour as the Instruct tokenizers ship them (tokenizer_config.json):
# Llama-3.1/3.2-Instruct: bos <|begin_of_text|> (added by the post-processor), eos <|eot_id|>, no pad.
# Qwen2.5-Instruct: no bos, eos <|im_end|>, pad <|endoftext|>. SmolLM2-Instruct: bos <|im_start|> (not
# added), eos <|im_end|>, pad <|im_end|>. Mistral-7B-Instruct: bos <s> (added), eos </s>, no pad.
# Gemma-2/3 it: bos <bos> (added), eos <eos>, pad <pad>.
FAMILIES: dict[str, Family] = {
    "llama3.1": Family("llama3.1", bos="<|begin_of_text|>", add_bos=True, eos="<|eot_id|>", specials=_LLAMA3),
    "llama3.2": Family("llama3.2", bos="<|begin_of_text|>", add_bos=True, eos="<|eot_id|>", specials=_LLAMA3),
    "qwen2.5": Family("qwen2.5", eos="<|im_end|>", pad="<|endoftext|>", specials=_CHATML_QWEN),
    "mistral_v0.2": Family("mistral_v0.2", bos="<s>", add_bos=True, eos="</s>", specials=_MISTRAL),
    "mistral_v0.3": Family("mistral_v0.3", bos="<s>", add_bos=True, eos="</s>", specials=_MISTRAL),
    "gemma2": Family("gemma2", bos="<bos>", add_bos=True, eos="<eos>", pad="<pad>", specials=_GEMMA),
    "gemma3": Family("gemma3", bos="<bos>", add_bos=True, eos="<eos>", pad="<pad>", specials=_GEMMA),
    "smollm2": Family("smollm2", bos="<|im_start|>", eos="<|im_end|>", pad="<|im_end|>", specials=_CHATML_SMOL),
}

# A fixed training text for the BPE merges: ordinary English plus the words the tests use, so answers
# are cut into multi-byte tokens (a merge across a piece boundary would show up as a prefix mismatch).
_CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is Madrid.",
    "What is the capital of France? What is two plus two? Two plus two is four. Four, it is.",
    "You are a helpful assistant. Be brief. Answer in one word. Thanks, and what about Italy?",
    "Hello there! How are you today? I am fine, thank you. Goodbye for now.",
    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n",
    "system user assistant model\n\n user\n assistant\n model\n",
]


def verify_fixture(name: str) -> str:
    """sha256 of the fixture file (tests compare it with TEMPLATE_SHA256)."""
    return hashlib.sha256((TEMPLATES / f"{name}.jinja").read_bytes()).hexdigest()


def build_tokenizer(name: str, *, eos: str | None = None, pad: str | None = "default"):
    """A PreTrainedTokenizerFast for family `name`; `eos`/`pad` override the family's (pad=None: no pad token)."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    fam = FAMILIES[name]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=list(fam.specials), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS, trainer)
    tok.add_special_tokens(list(fam.specials))
    if fam.add_bos:
        bos_id = tok.token_to_id(fam.bos)
        tok.post_processor = processors.TemplateProcessing(single=f"{fam.bos} $A", pair=f"{fam.bos} $A {fam.bos} $B",
                                                           special_tokens=[(fam.bos, bos_id)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    kwargs = {"bos_token": fam.bos, "eos_token": eos or fam.eos, "pad_token": fam.pad if pad == "default" else pad}
    return PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=fam.template,
                                   model_max_length=4096, name_or_path=f"fixture-{name}",
                                   **{k: v for k, v in kwargs.items() if v is not None})
