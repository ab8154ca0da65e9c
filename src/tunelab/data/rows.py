"""Rows of any dataset -> Examples (conversations ending with the answer), one reader per format.

- chat: a `messages` column of {role, content} turns (system/user/assistant; multi-turn allowed);
- prompt_completion: TRL's `prompt`/`completion` columns (strings, or lists of turns);
- fields: the prompt template's placeholders name columns ('{input}' reads input_field) and
  output_field holds the answer.
Every problem names the file, the split and the row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from tunelab.data.conversation import ROLES, Example, Message, with_system
from tunelab.data.images import image_value, parse_parts
from tunelab.errors import TunelabError
from tunelab.spec import template_fields

Format = Literal["chat", "prompt_completion", "fields"]


@dataclass(frozen=True)
class RowReader:
    """How one dataset's rows become Examples: format, prompt template, answer column, system prompt."""

    format: Format
    template: str | None = None
    input_field: str = "input"
    output_field: str = "output"
    system_prompt: str | None = None
    image_dir: str | None = None  # where image parts' relative paths start: the dataset file's folder
    image_field: str | None = None  # fields format: the column holding the row's image

    def columns_needed(self) -> list[str]:
        if self.format == "chat":
            return ["messages"]
        if self.format == "prompt_completion":
            return ["prompt", "completion"]
        names = template_fields(self.template or "")
        image = [self.image_field] if self.image_field else []
        return [self.input_field if n == "input" else n for n in names] + image + [self.output_field]

    def example(self, row: dict[str, Any], where: str) -> Example:
        """The row as a conversation; `where` ('file: train row 3') prefixes every error."""
        if self.format == "chat":
            messages = _turns(row.get("messages"), where, "messages", self.image_dir)
            if not any(m.role == "assistant" for m in messages):
                raise TunelabError(f"{where}: the conversation has no assistant turn to learn or score")
            if messages[-1].role != "assistant":
                raise TunelabError(f"{where}: the conversation must end with an assistant turn "
                                   f"(it ends with '{messages[-1].role}')")
        elif self.format == "prompt_completion":
            messages = self._prompt_completion(row, where)
        else:
            messages = (Message("user", self.fill(row, where), self._image(row, where)),
                        Message("assistant", _text(row, self.output_field, where)))
        return Example(with_system(messages, self.system_prompt))

    def fill(self, row: dict[str, Any], where: str, template: str | None = None) -> str:
        """The prompt template with the row's fields put in ('{input}' reads input_field)."""
        template = template if template is not None else self.template
        if template is None:
            raise TunelabError(f"{where}: rows of the fields format need a prompt template (prompt:)")
        values = {n: _text(row, self.input_field if n == "input" else n, where) for n in template_fields(template)}
        return template.format(**values)

    def _image(self, row: dict[str, Any], where: str) -> tuple[str, ...]:
        """The row's image (image_field), as a file path or a data URI; none without image_field."""
        if not self.image_field:
            return ()

        if row.get(self.image_field) is None:
            raise TunelabError(f"{where}: no image in '{self.image_field}' (image_field)")
        return (image_value(row[self.image_field], self.image_dir, f"{where}: {self.image_field}"),)

    def _prompt_completion(self, row: dict[str, Any], where: str) -> tuple[Message, ...]:
        prompt, completion = row.get("prompt"), row.get("completion")
        if isinstance(prompt, str):
            text = self.fill({**row, self.input_field: prompt}, where) if self.template else prompt
            head: tuple[Message, ...] = (Message("user", text),)
        else:
            head = _turns(prompt, where, "prompt", self.image_dir)
        if isinstance(completion, str):
            tail: tuple[Message, ...] = (Message("assistant", completion),)
        else:
            tail = _turns(completion, where, "completion")
            if [m.role for m in tail] != ["assistant"]:
                raise TunelabError(f"{where}: completion must be one assistant turn")
        return head + tail


def _text(row: dict[str, Any], column: str, where: str) -> str:
    if column not in row:
        raise TunelabError(f"{where}: no '{column}' field (fields: {', '.join(row)})")
    value = row[column]
    if value is None or isinstance(value, (dict, list)):
        raise TunelabError(f"{where}: '{column}' must be text or a number, not {type(value).__name__}")
    return str(value)


def _turns(value: Any, where: str, column: str, image_dir: str | None = None) -> tuple[Message, ...]:
    if not isinstance(value, list) or not value:
        raise TunelabError(f"{where}: '{column}' must be a non-empty list of {{role, content}} turns")
    out = []
    for i, turn in enumerate(value):
        content = turn.get("content") if isinstance(turn, dict) else None
        if not isinstance(content, (str, list)):
            raise TunelabError(f"{where}: {column}[{i}] needs a role and a text content (or a list of parts)")
        if turn.get("role") not in ROLES:
            raise TunelabError(f"{where}: {column}[{i}].role is {turn.get('role')!r}; use one of {', '.join(ROLES)}")
        if isinstance(content, list):  # content parts: text and images (a vision-language row)
            text, images = parse_parts(content, f"{where}: {column}[{i}]", image_dir)
            out.append(Message(turn["role"], text, images))
        else:
            out.append(Message(turn["role"], content))
    return tuple(out)


def detect_format(columns: list[str], forced: str, template: str | None, input_field: str, output_field: str,
                  where: str) -> Format:
    """The row format: forced, or chat > prompt_completion > fields, from the columns present."""
    if forced != "auto":
        fmt: Format = forced  # type: ignore[assignment]
    elif "messages" in columns:
        fmt = "chat"
    elif "prompt" in columns and "completion" in columns:
        fmt = "prompt_completion"
    else:
        fmt = "fields"
    reader = RowReader(fmt, template, input_field, output_field)
    if fmt == "fields" and template is None:
        raise TunelabError(
            f"{where}: rows have neither 'messages' (chat) nor 'prompt'/'completion' columns, and the spec has "
            f"no prompt template naming their fields (columns: {', '.join(columns)})")
    missing = [c for c in reader.columns_needed() if c not in columns]
    if missing:
        hint = {"chat": "a 'messages' column", "prompt_completion": "'prompt' and 'completion' columns"}.get(
            fmt, f"the prompt template's fields and output_field '{output_field}'")
        raise TunelabError(f"{where}: no column(s) {', '.join(missing)} (format {fmt} needs {hint}; "
                           f"columns: {', '.join(columns)})")
    return fmt
