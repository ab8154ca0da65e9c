"""Evaluate a whole experiment: every fine-tuned run's chosen checkpoints, every control and every
eval-only checkpoint, on every task of the spec; the targets of one base model in one pass (passes.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import Progress

from tunelab.console import progress_columns, say
from tunelab.errors import NoSpaceError, TunelabError
from tunelab.evaluate.kinds import show
from tunelab.evaluate.passes import evaluate_runs
from tunelab.evaluate.targets import parse_epochs
from tunelab.ledger import store as ledger
from tunelab.rundir import layout
from tunelab.rundir.experiment import load_runs, select_runs, training_state

if TYPE_CHECKING:
    from tunelab.evaluate.work import Outcome, WorkItem


def evaluate_experiment(experiment_dir: str | Path, names: list[str] | None = None, epochs: str | None = None,
                        force: bool = False, console: Console | None = None, ingest: bool = True,
                        tasks: list[str] | None = None, one_pass: bool = True, engine: str | None = None,
                        progress: Callable[[int, int, str], None] | None = None,
                        inspect_loop: bool = False) -> dict[str, list]:
    """Evaluate completed fine-tuned runs, controls and eval-only runs, skipping what has scores (unless force). epochs:
    'last' | 'all' | '0,2'. `one_pass=False`: every target one at a time; `progress`: called (done, total, what) per
    target × task; `engine`: hf | vllm; `inspect_loop`: every task through inspect-ai's own loop."""
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
    try:
        with Progress(*progress_columns(), console=console) as bar:
            task = bar.add_task("evaluating", total=None)
            counts = [0, 0]  # done, total

            def planned(total: int) -> None:
                counts[1] = total
                bar.update(task, total=total)

            def report(item: WorkItem, outcome: Outcome) -> None:
                counts[0] += 1
                bar.update(task, completed=counts[0], description=f"evaluated {item.cfg.name} {item.target.label}")
                _say_outcome(item, outcome, bar.console)
                if progress is not None:
                    progress(counts[0], counts[1], item.where())

            return evaluate_runs(todo, chosen, force, tasks=tasks, planned=planned, report=report,
                                 console=bar.console, one_pass=one_pass, engine=engine,
                                 inspect_loop=inspect_loop)
    except NoSpaceError:
        ingest = False  # the ledger has no room either; the next command ingests what was written
        raise
    finally:
        if ingest:  # a cluster job leaves the ledger to the coordinator
            ledger.ingest_all(exp, all_runs)


def _say_outcome(item: WorkItem, outcome: Outcome, console: Console) -> None:
    if isinstance(outcome, TunelabError):
        say("  [red]{} {} {}: failed[/red]: {}", item.cfg.name, item.target.label, item.spec.name, outcome.message,
            console=console)
    else:
        say("  {} {} {}: {} {} ({} samples)", item.cfg.name, item.target.label, item.spec.name, outcome.primary_metric,
            show(outcome.score, outcome.primary_metric), outcome.samples, console=console)
