"""The search as the sweep's first step: with a `tune:` block, `tunelab run` trains no run at a rate no search chose;
such runs get their combination's search first and are scaffolded again at its rate. Where no search can run, it refuses
in one line naming `tunelab tune`: a comparison is tuned only when a search produced its rates."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING

from tunelab.errors import TunelabError
from tunelab.execute.executor import Executor
from tunelab.rundir.experiment import SPEC_FILE, load_runs, select_runs
from tunelab.rundir.layout import COMPLETED, PENDING
from tunelab.rundir.status import read_status
from tunelab.rundir.tuned import TRIAL_PREFIX, TunedRate, evaluating, read_best, read_pruned, tune_dir
from tunelab.spec import load_spec
from tunelab.spec.tune import combination_name


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


if TYPE_CHECKING:  # the search's modules load Optuna: imported where a search runs, not to ask whether one must
    from tunelab.plan.planner import Plan
    from tunelab.tune.search import TrialDone


def unsearched(experiment_dir: str | Path, runs: Collection[str] | None = None,
               force: bool = False) -> dict[str, list[str]]:
    """The runs `tunelab run` is about to train at a rate no search chose, by combination: fine-tuned runs without
    `tuned:` (not the default-lr twins), completed ones only when `force` trains them again."""
    spec_path = Path(experiment_dir) / SPEC_FILE
    spec = load_spec(spec_path) if spec_path.is_file() else None
    if spec is None or spec.tune is None:
        return {}
    per = spec.tune.per_factors(spec.factors)
    out: dict[str, list[str]] = {}
    for cfg in select_runs(load_runs(experiment_dir), list(runs) if runs else None):
        if cfg.kind != "finetune" or cfg.default_lr_of is not None or cfg.tuned is not None:
            continue
        if not force and read_status(cfg.run_dir).state == COMPLETED:
            continue  # trained already: `run` starts nothing here (the report says where its rate came from)
        out.setdefault(combination_name(cfg.factors, per), []).append(cfg.name)
    return out


def search_and_scaffold(spec_path: str | Path, trials: int | None = None,
                        on_trial: Callable[[TrialDone], None] = lambda done: None, executor: Executor | None = None,
                        only: Collection[str] | None = None) -> tuple[dict[str, TunedRate], Plan]:
    """`tunelab tune`'s work: the search, then every run scaffolded at its combination's best rate."""
    from tunelab.scaffold.write import scaffold
    from tunelab.tune.search import search

    best = search(spec_path, trials, on_trial=on_trial, executor=executor, only=only)
    return best, scaffold(spec_path)


def search_pending(experiment_dir: str | Path, pending: dict[str, list[str]], executor: Executor,
                      on_trial: Callable[[TrialDone], None] = lambda done: None,
                      dry_run: bool = False) -> dict[str, TunedRate]:
    """The searches of the `pending` combinations (`unsearched`) on `executor`, then the runs scaffolded at their
    rates; refused in one line where no search runs (`dry_run`) or one chose no rate. Returns their rates."""
    spec = Path(experiment_dir) / SPEC_FILE
    names = ", ".join(n for group in pending.values() for n in group)
    if dry_run:
        raise TunelabError(f"no learning-rate search has chosen the rate of {names} yet, and a dry run runs none: "
                           f"run `tunelab tune {spec}` first (a `tunelab run` without --dry-run searches first), "
                           "rather than see them submitted at the spec's default rate", file=spec, field="tune")
    best, _ = search_and_scaffold(spec, on_trial=on_trial, executor=executor, only=set(pending))
    missing = sorted(set(pending) - set(best))
    if missing:
        where = ", ".join(f"{tune_dir(experiment_dir) / c}/" for c in missing)
        raise TunelabError(f"the search of {', '.join(missing)} chose no rate: none of its trials completed (pruned "
                           f"or failed: {where}), so its runs would train at the spec's default rate; widen "
                           f"tune.learning_rate or run more trials (`tunelab tune {spec} --trials N`)",
                           file=spec, field="tune")
    return {c: best[c] for c in pending}
