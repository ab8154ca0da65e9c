"""Prompt formatting shared by training and evaluation (train/eval parity).

Both sides call `encode_prompt`, so the tokens a model is evaluated on are exactly the tokens it
was trained to continue: same template, same chat template, same special tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

ChatMode = Literal["auto", "always", "never"]


@dataclass(frozen=True)
class PromptFormat:
    """Everything that decides how an example becomes tokens (all of it lives in run.yaml)."""

    template: str
    chat_template: ChatMode = "auto"
    system_prompt: str | None = None

    def uses_chat(self, tokenizer: Any) -> bool:
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if self.chat_template == "always" and not has_template:
            raise ValueError("chat_template: 'always' but the tokenizer has no chat template")
        return self.chat_template == "always" or (self.chat_template == "auto" and has_template)

    def render(self, input_text: str, tokenizer: Any) -> str:
        """The prompt as text, ready to be continued by the model's answer."""
        user = self.template.format(input=input_text)
        if not self.uses_chat(tokenizer):
            return user
        messages = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.append({"role": "user", "content": user})
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def encode_prompt(self, input_text: str, tokenizer: Any) -> list[int]:
        # A chat template writes its own BOS; plain prompts get the tokenizer's special tokens.
        text = self.render(input_text, tokenizer)
        return list(tokenizer(text, add_special_tokens=not self.uses_chat(tokenizer))["input_ids"])

    def encode_completion(self, output_text: str, tokenizer: Any) -> list[int]:
        ids = list(tokenizer(output_text, add_special_tokens=False)["input_ids"])
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
        return ids

    def encode_example(self, input_text: str, output_text: str, tokenizer: Any) -> dict[str, list[int]]:
        """input_ids plus a completion mask (1 = answer token, the only ones that carry loss)."""
        prompt = self.encode_prompt(input_text, tokenizer)
        completion = self.encode_completion(output_text, tokenizer)
        return {"input_ids": prompt + completion, "completion_mask": [0] * len(prompt) + [1] * len(completion)}


def prompt_format_of(cfg: Any) -> PromptFormat:
    """The PromptFormat of a RunConfig."""
    return PromptFormat(template=cfg.prompt, chat_template=cfg.chat_template, system_prompt=cfg.system_prompt)
