"""The whole-sweep benchmark's table and closing lines (issue 66 item 1): per tool the median wall of its repeats and
their spread, each phase's median share, the peak PSS, every target's exact match and final loss; then one line
per peer, `sweep: tunelab ÷ <peer> = N.NNx (wall, median of R)` (speed over speed: the peer's median wall over
tunelab's; above 1, tunelab's sweep ended sooner), and one line per peer that could not run, with why."""

from __future__ import annotations

import statistics
from collections import defaultdict

from peerlib.sweep_spec import SweepResult


def by_tool(rows: list[SweepResult]) -> dict[str, list[SweepResult]]:
    """The repeats that ended with a wall (scores may be missing), per tool, in first-seen order."""
    out: dict[str, list[SweepResult]] = defaultdict(list)
    for row in rows:
        if row.wall_s is not None:
            out[row.tool].append(row)
    return dict(out)


def median_wall(rows: list[SweepResult]) -> float:
    return statistics.median(r.wall_s for r in rows if r.wall_s is not None)


def ratio_lines(rows: list[SweepResult]) -> list[str]:
    tools = by_tool(rows)
    if "tunelab" not in tools:
        return []
    ours = median_wall(tools["tunelab"])
    return [f"sweep: tunelab ÷ {tool} = {median_wall(theirs) / ours:.2f}x (wall, median of {len(theirs)}; "
            f"tunelab's of {len(tools['tunelab'])})"
            for tool, theirs in tools.items() if tool != "tunelab"]


def failure_lines(rows: list[SweepResult]) -> list[str]:
    """One line per tool none of whose repeats ended: its first error."""
    ended = set(by_tool(rows))
    first: dict[str, str] = {}
    for row in rows:
        if row.tool not in ended and row.error:
            first.setdefault(row.tool, row.error)
    return [f"sweep: {tool} could not run: {why}" for tool, why in first.items()]


def _phase_shares(rows: list[SweepResult]) -> str:
    names = list(dict.fromkeys(name for r in rows for name in r.phases))
    shares = {n: statistics.median(r.phases.get(n, 0.0) / r.wall_s for r in rows if r.wall_s) for n in names}
    return ", ".join(f"{n} {s:.0%}" for n, s in shares.items())


def _targets(row: SweepResult) -> str:
    return "; ".join(f"{o.name} {'–' if o.accuracy is None else f'{o.accuracy:.3f}'}"
                     f"{'' if o.final_loss is None else f' / {o.final_loss:.3f}'}" for o in row.outcomes)


def table(rows: list[SweepResult], load: str) -> str:
    """Markdown: one row per tool (median wall, min–max, phase shares, peak PSS), then each tool's first repeat's
    exact match / final loss per target; the load said above it."""
    lines = [f"Load (1/5/15 min) at the start of each repeat: {load}", "",
             "| tool | version | repeats | median wall s | min–max s | phases (median share) | peak PSS MiB |",
             "|---|---|---|---|---|---|---|"]
    tools = by_tool(rows)
    for tool, runs in tools.items():
        walls = [r.wall_s for r in runs if r.wall_s is not None]
        lines.append(f"| {tool} | {runs[0].version} | {len(runs)} | {median_wall(runs):.1f} | "
                     f"{min(walls):.1f}–{max(walls):.1f} | {_phase_shares(runs)} | "
                     f"{statistics.median(r.peak_pss_mib or 0.0 for r in runs):,.0f} |")
    lines += ["", "| tool | how it ran | exact match / final loss per target (first repeat) |", "|---|---|---|"]
    lines += [f"| {tool} | {runs[0].notes} | {_targets(runs[0])} |" for tool, runs in tools.items()]
    return "\n".join(lines)
