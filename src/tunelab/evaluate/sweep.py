"""Evaluate a whole experiment: every fine-tuned run's chosen checkpoints and every control."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tunelab import ledger
from tunelab.errors import TunelabError
from tunelab.experiment import load_runs, select_runs, training_state
from tunelab.train import status as st


def evaluate_experiment(experiment_dir: str | Path, names: list[str] | None = None, epochs: str | None = None,
                        force: bool = False, console: Console | None = None, ingest: bool = True,
                        ) -> dict[str, list[dict]]:
    """Evaluate completed fine-tuned runs and all controls; skip what already has scores (unless force)."""
    from tunelab.evaluate import evaluate_run

    if epochs not in (None, "last", "all"):
        raise TunelabError("must be 'last' or 'all'", field="--epochs")
    console = console or Console()
    exp = Path(experiment_dir).resolve()
    all_runs = load_runs(exp)
    runs = select_runs(all_runs, names)
    todo = []
    for cfg in runs:
        if cfg.kind == "finetune" and training_state(cfg.run_dir) != st.COMPLETED:
            console.print(f"[yellow]skip {cfg.name}: training not completed[/yellow]")
            continue
        todo.append(cfg)
    out: dict[str, list[dict]] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("evaluating", total=len(todo))
            for cfg in todo:
                progress.update(task, description=f"evaluating {cfg.name}")
                out[cfg.name] = evaluate_run(cfg, epochs=epochs or cfg.eval.epochs, force=force)
                for s in out[cfg.name]:
                    progress.console.print(f"  {cfg.name} {s['label']}: {s['task']} {100 * s['score']:.1f} % "
                                           f"({s['correct']}/{s['samples']})")
                progress.advance(task)
    finally:
        if ingest:  # a cluster job leaves the ledger to the coordinator
            ledger.ingest_all(exp, all_runs)
    return out
