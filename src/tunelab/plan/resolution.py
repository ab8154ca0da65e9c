"""What a sweep's evaluation can resolve: per accuracy task and dataset, the smallest difference in accuracy
its test split can detect between two runs, so a lab sizes its evaluation before spending GPU-hours (a power
analysis, its assumptions stated). The plan computes it once; plan.md and the terminal only show it."""

from __future__ import annotations

from tunelab.data.verify import DatasetInfo
from tunelab.spec import ExperimentSpec
from tunelab.stats.power import detectable_difference

ACCURACY_BUILTINS = ("exact_match", "includes", "choice")


def resolution_notes(spec: ExperimentSpec, datasets: dict[str, DatasetInfo]) -> list[str]:
    """One line per accuracy task × dataset split: the difference under which two runs cannot be told apart."""
    notes = []
    for t in spec.eval.resolved_tasks():
        if t.builtin not in ACCURACY_BUILTINS:
            continue
        for name in [t.dataset] if t.dataset else spec.dataset_levels():
            info = datasets.get(name)
            n = info.counts.get(t.split) if info else None
            limit = t.limit or spec.eval.limit
            if not n:
                continue
            n = min(n, limit) if limit else n
            det = detectable_difference(n)
            if det.paired is None or det.unpaired is None:
                notes.append(f"{t.name} on {name} / {t.split}, {n} test samples: too few to resolve any difference "
                             "in accuracy between two runs (alpha 0.05, power 0.8)")
                continue
            notes.append(f"{t.name} on {name} / {t.split}, {n} test samples: differences in accuracy under "
                         f"~{100 * det.paired:.0f} pp between two runs are not resolvable (paired on the same "
                         f"samples, assuming {det.discordant:.0%} of them change answer; ~{100 * det.unpaired:.0f} pp "
                         f"unpaired at {det.baseline:.0%} accuracy); alpha {det.alpha}, power {det.power}")
    return notes
