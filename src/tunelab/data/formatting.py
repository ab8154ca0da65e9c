"""Prompt formatting shared by training and evaluation (train/eval parity).

Both sides build tokens with this module: training calls `encode_example` on a whole conversation,
evaluation calls `encode_prompt` on every turn but the last, and the prompt tokens are, by
construction, the exact prefix training produced (the text is cut into the same pieces, each
tokenized on its own). With a chat template, each assistant answer ends with the template's own
end-of-turn token (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`, `</s>`…), which is also where
generation stops. Llama 3 templates print a date: it is pinned (`template_date`, kept in run.yaml).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tunelab.data.conversation import Example, Message
from tunelab.errors import TunelabError

ChatMode = Literal["auto", "always", "never"]
_PROBE = "Zq7Probe"  # a string no template changes, to see what a template writes after an answer


@dataclass(frozen=True)
class Piece:
    """A stretch of text tokenized on its own; answer pieces carry the loss."""

    text: str
    answer: bool
    special_tokens: bool = False  # let the tokenizer add its BOS (plain-text prompts only)
    eos: bool = False  # append the tokenizer's eos id (answers in plain-text mode)


@dataclass(frozen=True)
class PromptFormat:
    """Everything that decides how a conversation becomes tokens (all of it lives in run.yaml)."""

    chat_template: ChatMode = "auto"
    template_date: str | None = None
    train_on_input: bool = False

    # ---- which mode -------------------------------------------------------------------------
    def uses_chat(self, tokenizer: Any) -> bool:
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if self.chat_template == "always" and not has_template:
            raise TunelabError("chat_template is 'always' but the tokenizer has no chat template",
                               file=_tok_name(tokenizer))
        return self.chat_template == "always" or (self.chat_template == "auto" and has_template)

    # ---- public API -------------------------------------------------------------------------
    def encode_example(self, example: Example, tokenizer: Any) -> dict[str, list[int]]:
        """input_ids plus a completion mask (1 = tokens that carry loss: the assistant answers,
        each with its end-of-turn token; everything when train_on_input)."""
        return self.encode_examples([example], tokenizer)[0]

    def encode_examples(self, examples: Iterable[Example], tokenizer: Any) -> list[dict[str, list[int]]]:
        """encode_example of each, the same tokens: every piece's text tokenized in one batch call per kind.
        Why: a call per piece pays the tokenizer's per-call overhead, most of a short example's encoding (a
        training job encodes its whole split before its first step; a plan every split of every model)."""
        chat = self.uses_chat(tokenizer)
        pieces = [self._example_pieces(e, tokenizer, chat) for e in examples]
        return [{"input_ids": ids, "completion_mask": [1] * len(ids) if self.train_on_input else mask}
                for ids, mask in _tokenize_many(pieces, tokenizer)]

    def _example_pieces(self, example: Example, tokenizer: Any, chat: bool) -> list[Piece]:
        if not example.messages or example.messages[-1].role != "assistant":
            raise TunelabError("a training example must end with an assistant answer")
        return self._chat_example(example, tokenizer) if chat else (
            self._plain_pieces(example.messages, tokenizer, with_answer=True))

    def encode_prompt(self, messages: Sequence[Message], tokenizer: Any) -> list[int]:
        """The tokens a model continues with its answer: exactly the prefix `encode_example` built."""
        messages = tuple(messages)
        if self.uses_chat(tokenizer):
            text = self._render(messages, tokenizer, generation_prompt=True)
            pieces = self._chat_pieces(messages, text, tokenizer)
        else:
            pieces = self._plain_pieces(messages, tokenizer, with_answer=False)
        return _tokenize_many([pieces], tokenizer)[0][0]

    def stop_token_ids(self, tokenizer: Any) -> list[int]:
        """Where an answer ends: the end-of-turn token of the chat template, and eos."""
        ids = []
        if self.uses_chat(tokenizer):
            eot = end_of_turn_text(tokenizer, self.template_date)
            if eot:
                ids.append(tokenizer.convert_tokens_to_ids(eot))
        if tokenizer.eos_token_id is not None:
            ids.append(int(tokenizer.eos_token_id))
        return list(dict.fromkeys(ids))

    # ---- chat mode ----------------------------------------------------------------------------
    def _render(self, messages: tuple[Message, ...], tokenizer: Any, generation_prompt: bool) -> str:
        return render_chat(tokenizer, messages, generation_prompt, self.template_date)

    def _chat_example(self, example: Example, tokenizer: Any) -> list[Piece]:
        full = self._render(example.messages, tokenizer, generation_prompt=False)
        # Parity: the prompt an evaluation renders must be the text training saw before the answer.
        prompt_text = self._render(example.prompt, tokenizer, generation_prompt=True)
        pieces = self._chat_pieces(example.messages, full, tokenizer, {len(example.prompt): prompt_text})
        seen = "".join(p.text for p in pieces[:_last_answer(pieces)])
        if prompt_text != seen:
            raise TunelabError(
                "the chat template renders the prompt differently with and without the answer, so evaluation "
                f"could not see what training saw: {prompt_text[-60:]!r} vs {seen[-60:]!r}", file=_tok_name(tokenizer))
        return pieces

    def _chat_pieces(self, messages: tuple[Message, ...], text: str, tokenizer: Any,
                     rendered: dict[int, str] | None = None) -> list[Piece]:
        """Cut rendered text at every assistant turn: [context][answer][end-of-turn][context]…
        (`rendered`: turn -> the generation prompt of the messages before it, where the caller has it)."""
        eot = end_of_turn_text(tokenizer, self.template_date)
        pieces: list[Piece] = []
        cursor = 0
        for turn, m in enumerate(messages):
            if m.role != "assistant":
                continue
            content = m.content.strip()
            if not content:
                raise TunelabError(f"message {turn}: an empty assistant turn cannot be learned")
            # The answer is what a model writes after this turn's evaluation prompt, so it is searched for
            # after that prompt (a short answer such as "1" also occurs inside the prompt). Whitespace between
            # the prompt and the text (Mistral's "[/INST] answer", an answer's own leading spaces) is part of
            # it, and so is the answer's trailing whitespace when the end-of-turn token follows it.
            prompt = "" if not turn else (rendered or {}).get(turn) or self._render(messages[:turn], tokenizer,
                                                                                     generation_prompt=True)
            after = len(prompt) if len(prompt) >= cursor and text.startswith(prompt) else cursor
            found = text.find(content, after)
            if found < 0:
                raise TunelabError(f"the chat template does not reproduce the text of assistant turn {turn}",
                                   file=_tok_name(tokenizer))
            start, end = found, found + len(content)
            if cursor <= len(prompt) < found and text.startswith(prompt) and text[len(prompt):found].isspace():
                start = len(prompt)
            trailing = len(text) - end - len(text[end:].lstrip())
            if eot and trailing and text.startswith(eot, end + trailing):
                end += trailing
            answer = text[start:end]
            pieces += [Piece(text[cursor:start], False), Piece(answer, True)]
            cursor = end
            if eot and text.startswith(eot, cursor):
                pieces.append(Piece(eot, True))
                cursor += len(eot)
            elif cursor == len(text) or not eot:
                pieces[-1] = Piece(answer, True, eos=True)  # the template ends answers with nothing
        rest = text[cursor:]
        if messages and messages[-1].role != "assistant" and rest:
            pieces.append(Piece(rest, False))  # the generation prompt after the last turn
        return [p for p in pieces if p.text or p.eos]

    # ---- plain text mode (base models) --------------------------------------------------------
    def _plain_pieces(self, messages: tuple[Message, ...], tokenizer: Any, with_answer: bool) -> list[Piece]:
        body = messages[:-1] if with_answer else messages
        roles = [m.role for m in body]
        if roles.count("user") != 1 or "assistant" in roles:
            raise TunelabError("plain-text prompts (no chat template) take one user turn and one answer; "
                               "multi-turn conversations need a chat template", file=_tok_name(tokenizer))
        system = "".join(m.content + "\n\n" for m in body if m.role == "system")
        user = next(m.content for m in body if m.role == "user")
        pieces = [Piece(system + user, False, special_tokens=True)]
        if with_answer:
            pieces.append(Piece(messages[-1].content, True, eos=True))
        return pieces


def _last_answer(pieces: list[Piece]) -> int:
    """Index of the first piece of the last answer (the answer text, then maybe its end-of-turn)."""
    idx = len(pieces) - 1
    while idx > 0 and pieces[idx - 1].answer:
        idx -= 1
    return idx


def _tokenize_many(examples: list[list[Piece]], tokenizer: Any) -> list[tuple[list[int], list[int]]]:
    """(ids, loss mask) of each example's pieces, each piece tokenized on its own as ever, the texts passed to
    the tokenizer in one list per add_special_tokens setting (its batch call: the same ids per text)."""
    texts: dict[bool, list[str]] = {False: [], True: []}
    for pieces in examples:
        for p in pieces:
            if p.text:
                texts[p.special_tokens].append(p.text)
    batches = {flag: _ids_in_chunks(batch, tokenizer, flag) for flag, batch in texts.items()}
    out = []
    for pieces in examples:
        ids: list[int] = []
        mask: list[int] = []
        for p in pieces:
            piece_ids = list(next(batches[p.special_tokens])) if p.text else []
            if p.eos and tokenizer.eos_token_id is not None:
                piece_ids.append(int(tokenizer.eos_token_id))
            ids += piece_ids
            mask += [int(p.answer)] * len(piece_ids)
        out.append((ids, mask))
    return out


TOKENIZE_CHUNK = 256  # texts per tokenizer call: the per-call overhead paid once per chunk, and a whole split's
# transient encodings never held at once (a job's peak memory counts them: 1,600 demo rows' pieces raised the peak
# by 21 MiB in one call, 7 MiB in calls of 256, 5 MiB one by one; 0.116, 0.137 and 0.242 s)


def _ids_in_chunks(texts: list[str], tokenizer: Any, special_tokens: bool) -> Iterator[list[int]]:
    for start in range(0, len(texts), TOKENIZE_CHUNK):
        yield from tokenizer(texts[start:start + TOKENIZE_CHUNK], add_special_tokens=special_tokens)["input_ids"]


def _tok_name(tokenizer: Any) -> str:
    return str(getattr(tokenizer, "name_or_path", "") or "the tokenizer")


def render_chat(tokenizer: Any, messages: Sequence[Message], generation_prompt: bool, date: str | None) -> str:
    """apply_chat_template with the pinned date; a template's refusal becomes one clear error."""
    extra = {"date_string": date} if date else {}
    try:
        return tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.parts()} for m in messages],
            add_generation_prompt=generation_prompt, tokenize=False, **extra)
    except Exception as exc:  # jinja2's TemplateError from raise_exception(), or a missing variable
        raise TunelabError(f"the chat template refused the conversation: {exc}", file=_tok_name(tokenizer)) from None


def end_of_turn_text(tokenizer: Any, date: str | None = None) -> str | None:
    """The special token a chat template writes right after an assistant answer, if any."""
    cached = _EOT_CACHE.setdefault(tokenizer, {})
    if date in cached:
        return cached[date]
    probe = (Message("user", "Hi"), Message("assistant", _PROBE))
    text = render_chat(tokenizer, probe, False, date)
    tail = text[text.rfind(_PROBE) + len(_PROBE):] if _PROBE in text else ""
    eot = None
    if tail:
        first = tokenizer(tail, add_special_tokens=False)["input_ids"][:1]
        special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
        if first and first[0] in special:
            eot = tokenizer.convert_ids_to_tokens(first[0])
            if not tail.startswith(eot):
                eot = None
    cached[date] = eot
    return eot


# Per tokenizer object (weak: a tokenizer dropped is forgotten), per pinned date.
_EOT_CACHE: weakref.WeakKeyDictionary[Any, dict[str | None, str | None]] = weakref.WeakKeyDictionary()


def prompt_format_of(cfg: Any) -> PromptFormat:
    """The PromptFormat of a RunConfig (controls and eval-only runs have no training section)."""
    train_on_input = bool(cfg.training and cfg.training.train_on_input)
    return PromptFormat(chat_template=cfg.chat_template, template_date=cfg.chat_template_date,
                        train_on_input=train_on_input)
