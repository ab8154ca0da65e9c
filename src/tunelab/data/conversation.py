"""The one row type every dataset format becomes: a conversation that ends with the answer.

Chat rows are conversations already; prompt/completion rows and field rows (through the prompt
template) become one user turn and one assistant turn. Training puts loss on assistant turns;
evaluation sends every turn but the last and compares the model's answer with the last.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    role: Role
    content: str
    images: tuple[str, ...] = ()  # image files (absolute paths) shown before the text; data/images.py

    def parts(self) -> str | list[dict]:
        """The content as a chat template reads it: the text, or image parts then a text part."""
        if not self.images:
            return self.content
        return [*({"type": "image"} for _ in self.images), {"type": "text", "text": self.content}]


@dataclass(frozen=True)
class Example:
    """A conversation whose last message is the assistant's answer."""

    messages: tuple[Message, ...]

    @property
    def prompt(self) -> tuple[Message, ...]:
        """Every message before the answer: what a model is given at evaluation."""
        return self.messages[:-1]

    @property
    def answer(self) -> str:
        return self.messages[-1].content


def with_system(messages: tuple[Message, ...], system_prompt: str | None) -> tuple[Message, ...]:
    """Prepend the spec's system prompt unless the conversation brings its own."""
    if not system_prompt or (messages and messages[0].role == "system"):
        return messages
    return (Message("system", system_prompt), *messages)
