"""tunelab report: gather → analyze → figures → one Document → report.md + self-contained report.html."""

from __future__ import annotations

import base64
import re
import webbrowser
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from tunelab.fsutil import atomic_write_text
from tunelab.report.data import ReportData, gather
from tunelab.report.document import Bullets, Code, Document, Figure, Headline, Para, Table, inline_html, md_cell
from tunelab.report.figures import FigureFile, make_figures
from tunelab.report.findings import Findings, analyze
from tunelab.report.sections import compose

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
        return {"type": "figure", "src": src, "caption": inline_html(b.caption), "alt": b.alt, "path": b.path}
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


def _table(t: Table) -> list[str]:
    out = ["| " + " | ".join(md_cell(h) for h in t.header) + " |", "|" + "---|" * len(t.header)]
    out += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in t.rows]
    if t.caption:
        out += ["", f"*{t.caption}*"] if "*" not in t.caption else ["", t.caption]
    return out


def render_markdown(doc: Document) -> str:
    out = [f"# {doc.title}", ""]
    out += [f"**{label}:** {value}  " for label, value in doc.meta]
    out.append("")
    for sec in doc.sections:
        out += ["#" * sec.level + " " + sec.title, ""]
        for b in sec.blocks:
            if isinstance(b, Para):
                out.append(b.text)
            elif isinstance(b, Bullets):
                out += [f"- {item}" for item in b.items]
            elif isinstance(b, Table):
                out += _table(b)
            elif isinstance(b, Code):
                out += [f"```{b.lang}", b.text, "```"]
            elif isinstance(b, Figure):
                out += [f"![{b.alt}]({b.path})", "", f"*{b.caption}*" if "*" not in b.caption else b.caption]
            elif isinstance(b, Headline):
                out += [f"> **{b.title}**", ">"] + [f"> - {line}" for line in b.lines]
            out.append("")
    return "\n".join(out).rstrip() + "\n"


REPORT_DIR = "report"
FIGURES_DIR = "figures"


@dataclass
class ReportFiles:
    markdown: Path
    html: Path
    figures: list[Path]
    partial: bool


def build_document(experiment_dir: str | Path) -> tuple[Document, ReportData, Findings, dict[str, FigureFile]]:
    data = gather(experiment_dir)
    findings = analyze(data)
    figs = make_figures(data, data.experiment_dir / REPORT_DIR / FIGURES_DIR)
    return compose(data, findings, figs), data, findings, figs


def build_report(experiment_dir: str | Path) -> ReportFiles:
    """Write report/report.md, report/report.html and report/figures/."""
    doc, data, _, figs = build_document(experiment_dir)
    out = data.experiment_dir / REPORT_DIR
    md = atomic_write_text(out / "report.md", render_markdown(doc))
    html = atomic_write_text(out / "report.html", render_html(doc, out))
    return ReportFiles(md, html, [f.path for f in figs.values()], data.partial)


def write_report(experiment_dir: str | Path) -> Path:
    """The Markdown report's path, once the report is written (`tunelab demo`)."""
    return build_report(experiment_dir).markdown


def open_in_browser(path: Path) -> bool:
    """Open the HTML report in the default browser; False (and no error) where there is none."""
    try:
        return bool(webbrowser.open(path.resolve().as_uri()))
    except Exception:  # no display, no browser: the report is still on disk
        return False
