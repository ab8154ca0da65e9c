"""Medians and spread per tool, the one-line verdicts (speed over speed: above 1, tunelab faster) and the
Markdown table docs/benchmarks.md carries."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass

from peerlib.result import TrainResult

SAME_ANSWERS = 0.99  # issue 52: at least this share of a peer's answers must equal tunelab's, on every target
FIELDS = ("wall_s", "first_step_s", "tokens_per_s", "own_tokens_per_s", "peak_pss_mib", "training_pss_mib",
          "peak_rss_sum_mib", "final_loss", "accuracy", "peak_gpu_mib")


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
        for name, field, better_low in (("first step", "first_step_s", True), ("peak PSS", "peak_pss_mib", True),
                                        ("peak PSS while training", "training_pss_mib", True),
                                        ("peak GPU memory used", "peak_gpu_mib", True)):
            a, b = stats[(model, "tunelab")][field], figures[field]
            if a and b:
                lines.append(f"  {name} ({model}): {tool} ÷ tunelab = {b.median / a.median:.2f}x "
                             f"(above 1: tunelab {'lower' if better_low else 'higher'})")
    return lines


def table(rows: list[TrainResult], versions: dict[str, str]) -> str:
    """One row per model and tool: medians (min–max); the GPU job's adds NVML's peak used GPU memory. Wall and
    first step from the first command a user types (tunelab: `scaffold` then `train`), caches and history fresh
    for every tool in every repeat (peerlib/isolation.py); memory the process tree's PSS (shared pages once)."""
    gpu = any(r.peak_gpu_mib is not None for r in rows)
    head = ("| model | tool | version | wall s, from the first command (cold caches) | first step s, from the first "
            "command | tokens/s (one count) | tokens/s (its own log) | peak PSS MiB (process tree) | peak PSS MiB, "
            "until the last step | summed RSS MiB (shared pages per process) | final loss | exact match |"
            + (" peak GPU MiB (NVML) |" if gpu else "") + "\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if gpu else ""))
    out = [head]
    for (model, tool), f in sorted(by_tool(rows).items()):
        def cell(name: str, digits: int = 1, f: dict = f) -> str:  # this row's figures, bound as the row is written
            s = f[name]
            return s.text(digits) if s else "–"
        out.append(f"| {model} | {tool} | {versions.get(tool, '?')} | {cell('wall_s')} | {cell('first_step_s')} | "
                   f"{cell('tokens_per_s', 0)} | {cell('own_tokens_per_s', 0)} | {cell('peak_pss_mib', 0)} | "
                   f"{cell('training_pss_mib', 0)} | {cell('peak_rss_sum_mib', 0)} | "
                   f"{cell('final_loss', 3)} | {cell('accuracy', 3)} |" + (f" {cell('peak_gpu_mib', 0)} |" if gpu else ""))
    for (model, tool), why in sorted(failures(rows).items()):
        out.append(f"| {model} | {tool} | {versions.get(tool, '?')} | failed: {why[:160]} | | | | | | | | |")
    return "\n".join(out)


def _by(rows: list, key: str) -> dict[str, Spread | None]:
    names = sorted({getattr(r, key) for r in rows})
    return {n: spread([r.wall_s for r in rows if getattr(r, key) == n and r.error is None]) for n in names}


def _eval_walls(rows: list) -> dict[tuple[str, str], Spread | None]:
    """{(model, route): the whole sweep's wall over its repeats that ran}, models and routes in their run order."""
    keys = list(dict.fromkeys((r.model, r.mode) for r in rows))
    return {key: spread([r.wall_s for r in rows if (r.model, r.mode) == key and r.error is None]) for key in keys}


def _worst(rows: list, model: str, mode: str, name: str) -> str:
    """The lowest share (agreement, prompts_identical) over a route's repeats, as text."""
    got = [getattr(r, name) for r in rows if (r.model, r.mode) == (model, mode) and getattr(r, name) is not None]
    return f"{min(got):.1%}" if got else "–"


def eval_lines(rows: list) -> list[str]:
    """`evaluation (MODEL): tunelab ÷ lm-eval CLI = 3.2x (demo sweep wall, median of 3; …)` per model and peer route."""
    walls = _eval_walls(rows)
    out = []
    for (model, mode), theirs in walls.items():
        ours = walls.get((model, "tunelab"))
        if mode == "tunelab":
            continue
        if ours is None or theirs is None:
            failed = mode if theirs is None else "tunelab"
            why = next((r.error for r in rows if (r.model, r.mode) == (model, failed) and r.error), "")
            out.append(f"evaluation ({model}): {mode} against tunelab could not be compared: {why}")
            continue
        agree = [r.agreement for r in rows if (r.model, r.mode) == (model, mode) and r.agreement is not None]
        short = " — under the 99 % asked: the answers differ" if agree and min(agree) < SAME_ANSWERS else ""
        out.append(f"evaluation ({model}): tunelab ÷ {mode} = {theirs.median / ours.median:.2f}x (demo sweep wall, "
                   f"median of {min(ours.n, theirs.n)}; answers identical to tunelab's: "
                   f"{_worst(rows, model, mode, 'agreement')}, prompt tokens identical: "
                   f"{_worst(rows, model, mode, 'prompts_identical')}, on its worst target){short}")
    return out


def eval_table(rows: list) -> str:
    out = [("| model | evaluation route | processes | wall s, the whole sweep | samples | answers identical to "
            "tunelab's (worst target) | prompt tokens identical to tunelab's (worst target) |"),
           "|---|---|---|---|---|---|---|"]
    for (model, mode), wall in _eval_walls(rows).items():
        ok = [r for r in rows if (r.model, r.mode) == (model, mode) and r.error is None]
        if wall is None or not ok:
            why = next((r.error for r in rows if (r.model, r.mode) == (model, mode) and r.error), "")
            out.append(f"| {model} | {mode} | | failed: {why[:160]} | | | |")
            continue
        out.append(f"| {model} | {mode} | {ok[0].processes} | {wall.text()} | {ok[0].samples} | "
                   f"{_worst(rows, model, mode, 'agreement')} | {_worst(rows, model, mode, 'prompts_identical')} |")
    return "\n".join(out)


def search_lines(rows: list, warm: bool = False) -> list[str]:
    """One line per Oumi way (one after the other; at once, as tunelab's studies run): its wall over tunelab's."""
    walls = _by(rows, "tool")
    ours = walls.get("tunelab")
    peers = [tool for tool in walls if tool != "tunelab"]
    if ours is None or not peers or all(walls[t] is None for t in peers):
        return [f"search: {r.tool} failed: {r.error}" for r in rows if r.error][:2]
    # each repeat's best loss over its ranks: the median over repeats compares one search with another (a seeded
    # search draws the same trials every repeat, an unseeded one new ones, so the best over repeats favours it)
    per_repeat = {tool: [min(v for _lr, v in r.best.values()) for r in rows if r.tool == tool and r.best]
                  for tool in walls if walls[tool] is not None}
    loss = {tool: f"{statistics.median(v):.4f} ({min(v):.4f})" for tool, v in per_repeat.items()}
    out = []
    for tool in peers:
        theirs = walls[tool]
        if theirs is None:
            out.append(f"search: {tool} failed: {next(r.error for r in rows if r.tool == tool and r.error)}")
            continue
        out.append(f"search: tunelab ÷ {tool} = {theirs.median / ours.median:.2f}x (wall to the best rates, median "
                   f"of {min(ours.n, theirs.n)}, {'warm caches' if warm else 'cold caches'}; a repeat's best "
                   f"validation loss, median (lowest) over the repeats: tunelab {loss['tunelab']}, {tool} "
                   f"{loss[tool]})")
    return out


def search_table(rows: list, warm: bool = False) -> str:
    caches = "warm caches: each tool's second search" if warm else "cold caches"
    out = ["| search (oumi: its studies one after the other, all threads each; oumi at once: side by side, a share "
           f"each, as tunelab's) | repeat | wall s ({caches}) | trials | best rate and validation loss per rank |",
           "|---|---|---|---|---|"]
    for r in rows:
        if r.error:
            out.append(f"| {r.tool} | {r.repeat} | failed: {r.error[:160]} | | |")
            continue
        best = "; ".join(f"r{lvl}: {lr:.3g}, {loss:.4f}" for lvl, (lr, loss) in sorted(r.best.items()))
        out.append(f"| {r.tool} | {r.repeat} | {r.wall_s:.1f} | {r.trials} | {best} |")
    return "\n".join(out)
