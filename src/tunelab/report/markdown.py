"""The Markdown rendering of the report Document (report/report.md)."""

from __future__ import annotations

from tunelab.report.document import Bullets, Code, Document, Figure, Headline, Para, Table, md_cell


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

