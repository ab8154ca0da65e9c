"""The search's progress as `tunelab status` shows it, read from the trial directories and tune/best.json alone
(no Optuna, no journal replay): a line per combination."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tunelab.rundir.layout import COMPLETED, PENDING
from tunelab.rundir.status import read_status
from tunelab.rundir.tuned import TRIAL_PREFIX, evaluating, read_best, read_pruned, tune_dir


def trial_state(run_dir: Path) -> str:
    """pruned, evaluating (trained, not scored yet), or the run's own state."""
    if read_pruned(run_dir) is not None:
        return "pruned"
    state = read_status(run_dir).state or PENDING
    return "evaluating" if state == COMPLETED and evaluating(run_dir) else str(state)


def progress_lines(experiment_dir: str | Path, trials: int | None = None) -> list[str]:
    """'lora_rank-4: 3/8 trials (2 completed, 1 pruned); best so far …' per combination searched ([] before any)."""
    root = tune_dir(experiment_dir)
    best = read_best(experiment_dir)
    lines = []
    for combo in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        states = Counter(trial_state(d) for d in combo.iterdir() if d.name.startswith(TRIAL_PREFIX))
        count = sum(states.values())
        of = f"/{trials}" if trials else ""
        parts = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
        chosen = f"; {best[combo.name].source}" if combo.name in best else ""
        lines.append(f"{combo.name}: {count}{of} trials ({parts}){chosen}")
    return lines
