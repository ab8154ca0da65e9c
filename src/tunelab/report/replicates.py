"""The report's Replicates section: `seed` swept is replication, not a factor to win. Runs differing only in seed are
one configuration, scored by the mean with a t interval, each factor's effect set against the seed SD."""

from __future__ import annotations

from typing import Any

from tunelab.report.comparisons import replicated
from tunelab.report.data import ReportData, RunData
from tunelab.report.document import Bullets, Para, Section, Table
from tunelab.report.evaluation import diff_text, is_fraction, show, show_ci
from tunelab.report.findings import Findings
from tunelab.stats.replicates import SEED_FACTOR, Spread, across_replicates, seed_sd


def configurations(data: ReportData) -> dict[tuple[Any, ...], list[RunData]]:
    """Completed runs grouped by everything but their seed (model, dataset and the other factors)."""
    groups: dict[tuple[Any, ...], list[RunData]] = {}
    for r in data.completed:
        key = (r.model, r.dataset, *((k, v) for k, v in r.factors.items() if k != SEED_FACTOR))
        groups.setdefault(key, []).append(r)
    return groups


def _label(key: tuple[Any, ...]) -> str:
    model, dataset, *factors = key
    return ", ".join([f"model={model}"] + [f"{k}={v}" for k, v in factors])


def _sd_text(v: float | None, metric: str | None) -> str:
    if v is None:
        return "—"
    return f"{100 * v:.1f} pp" if is_fraction(metric) else f"{v:.4g}"


def replicates(data: ReportData, f: Findings) -> Section | None:
    head = data.headline
    if not replicated(data) or head is None:
        return None
    metric = head.primary_metric
    rows, values = [], []
    for key, runs in configurations(data).items():
        vals = [v for r in runs if (v := r.value(head.name)) is not None]
        if not vals:
            continue
        s: Spread = across_replicates(vals)
        values.append(vals)
        interval = (s.low, s.high) if s.low is not None and s.high is not None else None
        rows.append([_label(key), str(s.n), show_ci(s.mean, interval, metric), _sd_text(s.sd, metric),
                     f"{show(s.min, metric)} – {show(s.max, metric)}"])
    if not rows:
        return None
    sd = seed_sd(values)
    blocks: list = [Table(["Configuration", "Seeds", f"Mean {metric} [95 % t interval across seeds]", "SD",
                           "Min – max"], rows,
                          f"{head.name} ({metric}) of each configuration over its seeds (`seed` is swept: replicates, "
                          "not levels to choose from); last evaluated checkpoints.")]
    blocks.append(Para(f"**Seed-to-seed SD** (pooled over configurations, residual of a one-way model): "
                       f"{_sd_text(sd, metric)}."))
    items = []
    for eff in f.effects:
        best, worst = eff.best, eff.worst
        if eff.metric != "score" or eff.task != head.name or best is None or worst is None or eff.diff is None:
            continue
        size = abs(eff.diff.estimate)
        ratio = f"{size / sd:.1f}× the seed-to-seed SD" if sd else "seed-to-seed SD unknown"
        verdict = ("exceeds seed-to-seed variation" if eff.diff.resolved
                   else "does not exceed seed-to-seed variation")
        items.append(f"**{eff.factor}:** {best.level} − {worst.level} = {diff_text(eff.diff, metric)} "
                     f"({eff.diff.method}); {ratio}: the effect {verdict}.")
    if items:
        blocks.append(Bullets(items))
    return Section("Replicates (seeds)", blocks)
