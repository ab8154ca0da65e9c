"""A small document model the report is composed in once, then rendered to Markdown and HTML; inline marks are **bold**
and `code` only, the same in both."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field


@dataclass
class Para:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""  # where the numbers come from


@dataclass
class Code:
    text: str
    lang: str = "bash"


@dataclass
class Figure:
    path: str  # relative to the report directory, e.g. figures/loss_curves.png
    caption: str
    alt: str = ""


@dataclass
class Headline:
    """The answer at a glance: a big line and a few facts under it."""

    title: str
    lines: list[str]
    ok: bool = True


Block = Para | Bullets | Table | Code | Figure | Headline


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)
    level: int = 2
    anchor: str = ""

    def __post_init__(self) -> None:
        if not self.anchor:
            self.anchor = re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")


@dataclass
class Document:
    title: str
    meta: list[tuple[str, str]]  # (label, inline text) under the title
    sections: list[Section]
    partial: bool = False
    highlight: list[str] = field(default_factory=list)  # run names to mark in tables (the best runs)


_INLINE = re.compile(r"\*\*(.+?)\*\*|`([^`]+)`")


def inline_html(text: str) -> str:
    """Escape text, then turn **bold** and `code` into <strong> and <code>."""
    out, pos = [], 0
    for m in _INLINE.finditer(text):
        out.append(html.escape(text[pos:m.start()]))
        if m.group(1) is not None:
            out.append(f"<strong>{inline_html(m.group(1))}</strong>")
        else:
            out.append(f"<code>{html.escape(m.group(2))}</code>")
        pos = m.end()
    out.append(html.escape(text[pos:]))
    return "".join(out)


def md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
