"""`tunelab tune`: the learning-rate search of the spec's `tune:` block, then the runs scaffolded at their
combination's best rate (a line per trial as it ends)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from tunelab.cli.common import add_commands
from tunelab.console import say
from tunelab.rundir.experiment import SPEC_FILE

if TYPE_CHECKING:
    from tunelab.execute.executor import Executor
    from tunelab.tune.search import TrialDone

STATE_MARKUP = {"COMPLETE": "[green]completed[/green]", "PRUNED": "[yellow]pruned[/yellow]",
                "FAIL": "[red]failed[/red]"}


def tune_cmd(
    experiment: Path = typer.Argument(..., help="The experiment directory (or its experiment.yaml)."),
    trials: int | None = typer.Option(None, "--trials", min=1, help="Trials per combination (default: "
                                         "tune.trials of the spec)."),
) -> None:
    """Search each combination's learning rate, then scaffold the runs at it.

    Per combination of the tune.per factors' levels: Optuna trials, each a real run of budget x the run's steps
    under tune/<combination>/trial-N on the sweep's executor, pruned on their validation loss (successive
    halving) and judged by tune.objective (the last validation loss, or an eval task's metric: each trained
    trial then evaluated by a job of its own). Resumable: run it again after a stop or a kill and it goes on where it was. Then every run of
    the combination gets the best trial's rate in its run.yaml, with its source (`tuned:`)."""
    from tunelab.tune.sweep import search_and_scaffold

    spec = experiment / SPEC_FILE if experiment.is_dir() else experiment
    best, plan = search_and_scaffold(spec, trials, on_trial=trial_line)
    for name, rate in sorted(best.items()):
        say("[bold]{}[/bold]: {}", name, rate.source)
    say("scaffolded {} runs at their tuned learning rates in {}", len(plan.finetune_runs), plan.experiment_dir)


def trial_line(done: TrialDone) -> None:
    """A trial as it ends: 'lora_rank-4 trial 2 (3/8): lr 0.00031 completed, val loss 0.412 at step 9'."""
    state = done.outcome.state.name
    say("{} trial {} ({}/{}): lr {} " + STATE_MARKUP.get(state, state) + ", {}",
        done.combination, done.number, done.finished, done.trials, f"{done.learning_rate:.3g}", done.value_text)


def search_before_run(experiment_dir: Path, runs: list[str] | None, force: bool, ex: Executor, dry_run: bool) -> None:
    """`tunelab run`'s first step with a `tune:` block: unsearched runs get their combination's search, then are
    scaffolded at its rate; a dry run is refused in one line naming `tunelab tune`."""
    from tunelab.tune.sweep import search_pending, unsearched

    pending = unsearched(experiment_dir, runs, force)
    if not pending:
        return
    if not dry_run:
        say("the learning-rate search (tune:) has not chosen the rate of {}: searching it first, as `tunelab tune` "
            "does", ", ".join(sorted(pending)))
    for name, rate in sorted(search_pending(experiment_dir, pending, ex, trial_line, dry_run).items()):
        say("[bold]{}[/bold]: {}", name, rate.source)


def tuning_lines(experiment_dir: Path) -> None:
    """The learning-rate search's progress (`tunelab tune`), a line per combination, where one was started."""
    from tunelab.rundir.tuned import tune_dir
    from tunelab.spec import load_spec
    from tunelab.tune.sweep import progress_lines

    if not tune_dir(experiment_dir).is_dir():
        return
    tune = load_spec(experiment_dir / SPEC_FILE).tune
    for line in progress_lines(experiment_dir, tune.trials if tune else None):
        say("tune {}", line)


def register(app: typer.Typer) -> None:
    add_commands(app, {"tune": tune_cmd})
