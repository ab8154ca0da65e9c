"""Evaluate a whole experiment: every fine-tuned run's chosen checkpoints, every control and every
eval-only checkpoint, on every task of the spec."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from tunelab.ledger import store as ledger
from tunelab.console import progress_columns, say
from tunelab.evaluate.kinds import show
from tunelab.rundir.experiment import load_runs, select_runs, training_state
from tunelab.rundir import layout


def evaluate_experiment(experiment_dir: str | Path, names: list[str] | None = None, epochs: str | None = None,
                        force: bool = False, console: Console | None = None, ingest: bool = True,
                        tasks: list[str] | None = None) -> dict[str, list]:
    """Evaluate completed fine-tuned runs, controls and eval-only runs; skip what already has scores
    (unless force). epochs: 'last' | 'all' | '0,2' (default: each run's eval.epochs)."""
    from tunelab.evaluate import evaluate_run
    from tunelab.evaluate.targets import parse_epochs

    chosen = parse_epochs(epochs)
    console = console or Console()
    exp = Path(experiment_dir).resolve()
    all_runs = load_runs(exp)
    todo = []
    for cfg in select_runs(all_runs, names):
        if cfg.kind == "finetune" and training_state(cfg.run_dir) != layout.COMPLETED:
            say("[yellow]skip {}: training not completed[/yellow]", cfg.name, console=console)
            continue
        todo.append(cfg)
    out: dict[str, list] = {}
    try:
        with Progress(*progress_columns(), console=console) as progress:
            bar = progress.add_task("evaluating", total=len(todo))
            for cfg in todo:
                progress.update(bar, description=f"evaluating {cfg.name}")
                out[cfg.name] = evaluate_run(cfg, epochs=chosen if cfg.kind == "finetune" else None, force=force,
                                             tasks=tasks)
                for s in out[cfg.name]:
                    say("  {} {} {}: {} {} ({} samples)", cfg.name, s.label, s.task, s.primary_metric,
                        show(s.score, s.primary_metric), s.samples, console=progress.console)
                progress.advance(bar)
    finally:
        if ingest:  # a cluster job leaves the ledger to the coordinator
            ledger.ingest_all(exp, all_runs)
    return out
