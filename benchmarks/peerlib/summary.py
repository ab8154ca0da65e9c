"""Medians and spread per tool, the one-line verdicts (speed over speed: above 1, tunelab faster) and the
Markdown table docs/benchmarks.md carries."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass

from peerlib.result import TrainResult

FIELDS = ("wall_s", "first_step_s", "tokens_per_s", "own_tokens_per_s", "peak_rss_mib", "final_loss", "accuracy")


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float
    n: int

    def text(self, digits: int = 1) -> str:
        if self.n == 1:
            return f"{self.median:.{digits}f}"
        return f"{self.median:.{digits}f} ({self.low:.{digits}f}–{self.high:.{digits}f})"


def spread(values: list[float | None]) -> Spread | None:
    got = [v for v in values if v is not None]
    return Spread(statistics.median(got), min(got), max(got), len(got)) if got else None


def by_tool(rows: list[TrainResult]) -> dict[tuple[str, str], dict[str, Spread | None]]:
    groups: dict[tuple[str, str], list[TrainResult]] = defaultdict(list)
    for row in rows:
        if row.error is None:
            groups[(row.model, row.tool)].append(row)
    return {key: {f: spread([getattr(r, f) for r in group]) for f in FIELDS} for key, group in groups.items()}


def failures(rows: list[TrainResult]) -> dict[tuple[str, str], str]:
    """Tools whose every repeat failed, with the first reason."""
    ok = {(r.model, r.tool) for r in rows if r.error is None}
    return {(r.model, r.tool): r.error or "" for r in rows if r.error and (r.model, r.tool) not in ok}


def ratio_lines(rows: list[TrainResult]) -> list[str]:
    """`training (MODEL): tunelab ÷ PEER = 1.04x (tokens/s, median of 3)` per peer that ran."""
    stats = by_tool(rows)
    lines = []
    for (model, tool), figures in sorted(stats.items()):
        ours = stats.get((model, "tunelab"), {}).get("tokens_per_s")
        theirs = figures["tokens_per_s"]
        if tool == "tunelab" or ours is None or theirs is None:
            continue
        lines.append(f"training ({model}): tunelab ÷ {tool} = {ours.median / theirs.median:.2f}x "
                     f"(tokens/s, median of {min(ours.n, theirs.n)})")
        for name, field, better_low in (("first step", "first_step_s", True), ("peak RSS", "peak_rss_mib", True)):
            a, b = stats[(model, "tunelab")][field], figures[field]
            if a and b:
                lines.append(f"  {name} ({model}): {tool} ÷ tunelab = {b.median / a.median:.2f}x "
                             f"(above 1: tunelab {'lower' if better_low else 'higher'})")
    return lines


def table(rows: list[TrainResult], versions: dict[str, str]) -> str:
    head = ("| model | tool | version | wall s | first step s | tokens/s (one count) | tokens/s (its own log) "
            "| peak RSS MiB | final loss | exact match |\n|---|---|---|---|---|---|---|---|---|---|")
    out = [head]
    for (model, tool), f in sorted(by_tool(rows).items()):
        def cell(name: str, digits: int = 1) -> str:
            s = f[name]
            return s.text(digits) if s else "–"
        out.append(f"| {model} | {tool} | {versions.get(tool, '?')} | {cell('wall_s')} | {cell('first_step_s')} | "
                   f"{cell('tokens_per_s', 0)} | {cell('own_tokens_per_s', 0)} | {cell('peak_rss_mib', 0)} | "
                   f"{cell('final_loss', 3)} | {cell('accuracy', 3)} |")
    for (model, tool), why in sorted(failures(rows).items()):
        out.append(f"| {model} | {tool} | {versions.get(tool, '?')} | failed: {why[:160]} | | | | | | |")
    return "\n".join(out)
