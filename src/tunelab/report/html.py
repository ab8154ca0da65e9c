"""The HTML rendering of the report Document: one self-contained file (figures embedded as base64
PNG, CSS inline, no script, nothing fetched), from a jinja2 template."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from tunelab.report.document import Bullets, Code, Document, Figure, Headline, Para, Table, inline_html

_env = Environment(loader=PackageLoader("tunelab", "report/templates"), undefined=StrictUndefined,
                   autoescape=select_autoescape(["html", "j2"]))
_NUMERIC = re.compile(r"^[+\-−]?[\d,.]+(\s?(%|pp|s|B|KiB|MiB|GiB|TiB))?$|^\d+:\d\d(:\d\d)?$|^—$")


def _cell(text: str) -> dict[str, str]:
    t = str(text)
    cls = "ok" if t.startswith("✓") else "bad" if t.startswith("✗") else "warn" if t.startswith("⚠") else ""
    if _NUMERIC.match(t.strip()):
        cls = (cls + " num").strip()
        if t.strip().startswith("+") and t.endswith("pp"):
            cls += " pos"
        elif t.strip().startswith("-") and t.endswith("pp"):
            cls += " neg"
    return {"html": inline_html(t), "cls": cls}


def _block(b: Any, report_dir: Path, highlight: set[str]) -> dict[str, Any]:
    if isinstance(b, Para):
        return {"type": "para", "html": inline_html(b.text)}
    if isinstance(b, Bullets):
        return {"type": "bullets", "items": [inline_html(i) for i in b.items]}
    if isinstance(b, Table):
        return {"type": "table", "header": [inline_html(h) for h in b.header],
                "rows": [{"best": bool(row) and row[0] in highlight, "cells": [_cell(c) for c in row]}
                         for row in b.rows],
                "caption": inline_html(b.caption)}
    if isinstance(b, Code):
        return {"type": "code", "text": b.text}
    if isinstance(b, Figure):
        src = "data:image/png;base64," + base64.b64encode((report_dir / b.path).read_bytes()).decode("ascii")
        return {"type": "figure", "src": src, "caption": inline_html(b.caption),
                "alt": b.alt, "path": b.path}
    if isinstance(b, Headline):
        return {"type": "headline", "title": inline_html(b.title), "lines": [inline_html(x) for x in b.lines],
                "ok": b.ok}
    raise TypeError(f"unknown block {type(b).__name__}")


def render_html(doc: Document, report_dir: str | Path) -> str:
    report_dir = Path(report_dir)
    hl = set(doc.highlight)
    sections = [{"title": s.title, "anchor": s.anchor, "level": s.level,
                 "blocks": [_block(b, report_dir, hl) for b in s.blocks]} for s in doc.sections]
    meta = [(label, inline_html(value)) for label, value in doc.meta]
    return _env.get_template("report.html.j2").render(title=doc.title, meta=meta, sections=sections,
                                                      partial=doc.partial)
