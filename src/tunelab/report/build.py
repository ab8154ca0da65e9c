"""tunelab report: gather → analyze → figures → one Document → report.md + self-contained report.html."""

from __future__ import annotations

import webbrowser
from dataclasses import dataclass
from pathlib import Path

from tunelab.fsutil import atomic_write_text
from tunelab.report.data import ReportData, gather
from tunelab.report.document import Document
from tunelab.report.figures import FigureFile, make_figures
from tunelab.report.findings import Findings, analyze
from tunelab.report.html import render_html
from tunelab.report.markdown import render_markdown
from tunelab.report.sections import compose

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
