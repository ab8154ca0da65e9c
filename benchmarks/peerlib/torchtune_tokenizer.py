"""A torchtune ModelTokenizer that renders a model directory's OWN chat template (the fairness rule: every tool sees
the same text) and tokenizes with its tokenizer.json.

torchtune 0.6.1 has no tokenizer that reads a Hugging Face chat template: its HuggingFaceBaseTokenizer only
encodes/decodes, and its model tokenizers (Llama 3, Qwen 2, ...) hard-code their own formats. This class is
referenced from the run's config by `_component_: torchtune_tokenizer.TemplateTokenizer` (train_command copies this
file into the run directory; `tune run` puts its cwd on sys.path). It imports nothing from torchtune, so tunelab's
venv can check it against tunelab's own encoding (loss on each assistant answer and its end-of-turn token only).

Rendering follows what transformers' apply_chat_template does (a sandboxed jinja2 environment with trim_blocks and
lstrip_blocks, the tokenizer's special tokens as variables); the text is cut into pieces (context, answer,
end-of-turn), each tokenized on its own without special tokens, as tunelab does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

_PROBE = "Zq7Probe"  # a string no template changes: what follows it in a render is the end-of-turn text


def _template_env() -> Any:
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def _token_text(value: Any) -> str | None:
    """tokenizer_config.json writes a special token as a string or as {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


class TemplateTokenizer:
    """tokenize_messages -> (tokens, mask); mask True = no loss (torchtune's convention)."""

    def __init__(self, model_dir: str, max_seq_len: int | None = None) -> None:
        from tokenizers import Tokenizer

        root = Path(model_dir)
        self.tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
        config = json.loads((root / "tokenizer_config.json").read_text())
        template_file = root / "chat_template.jinja"
        source = template_file.read_text() if template_file.exists() else config.get("chat_template")
        if not isinstance(source, str):
            raise TypeError(f"{root}: no chat template (chat_template.jinja or tokenizer_config.json)")
        self.template = _template_env().from_string(source)
        self.specials = {k: t for k in ("bos_token", "eos_token", "unk_token", "pad_token")
                         if (t := _token_text(config.get(k))) is not None}
        self.bos_id = self._id(self.specials.get("bos_token"))
        self.eos_id = self._id(self.specials.get("eos_token"))
        pad = self._id(self.specials.get("pad_token"))
        self.pad_id = pad if pad is not None else (self.eos_id if self.eos_id is not None else 0)
        self.max_seq_len = max_seq_len
        self.eot = self._end_of_turn()

    def _id(self, token: str | None) -> int | None:
        return self.tokenizer.token_to_id(token) if token else None

    def render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt, **self.specials)

    def _end_of_turn(self) -> str | None:
        """The special token the template writes right after an answer (`<|eot|>`, `<|im_end|>`), if any."""
        text = self.render([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE}], False)
        after = text[text.rindex(_PROBE) + len(_PROBE):].lstrip()
        specials = sorted((t.content for t in self.tokenizer.get_added_tokens_decoder().values()), key=len,
                          reverse=True)
        return next((s for s in specials if s and after.startswith(s)), None)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids if text else []
        if add_bos and self.bos_id is not None:
            ids.insert(0, self.bos_id)
        if add_eos and self.eos_id is not None:
            ids.append(self.eos_id)
        return ids

    def decode(self, token_ids: list[int], **_: Any) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=False)

    def pieces(self, messages: list[dict]) -> list[tuple[str, bool, bool]]:
        """(text, carries loss, add eos) pieces: context, then each assistant answer (with the whitespace between
        its prompt and its text) and its end-of-turn token; what a template writes after the final answer's
        end-of-turn (ChatML's newline) is left out, as tunelab leaves it out."""
        text = self.render(messages, False)
        out: list[tuple[str, bool, bool]] = []
        cursor = 0
        for turn, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            content = m["content"].strip()
            prompt = self.render(messages[:turn], True) if turn else ""
            after = len(prompt) if len(prompt) >= cursor and text.startswith(prompt) else cursor
            start = text.find(content, after)
            if start < 0 or not content:
                raise ValueError(f"the chat template does not reproduce assistant turn {turn}")
            end = start + len(content)
            if cursor <= len(prompt) < start and text.startswith(prompt) and text[len(prompt):start].isspace():
                start = len(prompt)
            gap = len(text[end:]) - len(text[end:].lstrip())
            if self.eot and gap and text.startswith(self.eot, end + gap):
                end += gap
            out += [(text[cursor:start], False, False), (text[start:end], True, False)]
            cursor = end
            if self.eot and text.startswith(self.eot, cursor):
                out.append((self.eot, True, False))
                cursor += len(self.eot)
            elif cursor == len(text) or not self.eot:
                out[-1] = (out[-1][0], True, True)
        if messages and messages[-1]["role"] != "assistant" and cursor < len(text):
            out.append((text[cursor:], False, False))  # a generation prompt; after a final answer: nothing
        return [p for p in out if p[0] or p[2]]

    def tokenize_messages(self, messages: list[Any], **_: Any) -> tuple[list[int], list[bool]]:
        plain = [m if isinstance(m, dict) else {"role": m.role, "content": m.text_content} for m in messages]
        tokens: list[int] = []
        mask: list[bool] = []
        for text, loss, eos in self.pieces(plain):
            ids = self.encode(text, add_eos=eos)
            tokens += ids
            mask += [not loss] * len(ids)
        if self.max_seq_len is not None:
            tokens, mask = tokens[: self.max_seq_len], mask[: self.max_seq_len]
        return tokens, mask

    def __call__(self, sample: Mapping[str, Any], inference: bool = False) -> dict[str, Any]:
        tokens, mask = self.tokenize_messages(sample["messages"])
        out = dict(sample)
        out.pop("messages")
        out.update(tokens=tokens, mask=mask)
        return out
