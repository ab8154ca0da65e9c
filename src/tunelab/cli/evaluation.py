"""`tunelab eval`: every task on every checkpoint, control and eval-only model of an experiment."""

from __future__ import annotations

from pathlib import Path

import typer

from tunelab.cli.common import emit, json_option, stdout_to_stderr
from tunelab.console import console


def eval_cmd(
    experiment_dir: Path = typer.Argument(..., help="A scaffolded experiment directory."),
    epochs: str = typer.Option("", "--epochs", help="last, all, or a list such as 0,2 (default: the spec's "
                               "eval.epochs); fine-tuned runs only."),
    runs: list[str] | None = typer.Option(None, "--run", help="Only these runs, controls or eval-only runs "
                                             "(repeatable)."),
    tasks: list[str] | None = typer.Option(None, "--task", help="Only these tasks of eval.tasks (repeatable)."),
    force: bool = typer.Option(False, "--force", help="Re-evaluate checkpoints that already have scores."),
    no_ledger: bool = typer.Option(False, "--no-ledger", help="Write scores files only; leave tunelab.db to the "
                                   "coordinator (what cluster jobs do)."),
    one_at_a_time: bool = typer.Option(False, "--one-at-a-time", help="Load the weights for each checkpoint "
                                       "alone, every task in inspect-ai's loop: the reference (default: one pass "
                                       "per base model, adapters side by side; the scores are the same)."),
    engine: str | None = typer.Option(None, "--engine", help="hf or vllm: what generates, for this call "
                                         "(default: the spec's eval.engine; auto = vllm where vLLM is at hand "
                                         "and a GPU is visible, else hf)."),
    inspect_loop: bool = typer.Option(False, "--inspect-loop", help="The built-in generate-and-score tasks "
                                      "through inspect-ai's sample loop too, which logs each sample's event "
                                      "transcript (default: tunelab's batched loop, the same scores, faster)."),
    json_out: bool = json_option("every task scored now on each checkpoint"),
) -> None:
    """Evaluate checkpoints, controls and eval-only models on every task with inspect-ai.

    Evaluate every task of eval.tasks with inspect-ai on fine-tuned checkpoints, controls and eval-only
    checkpoints (greedy, prompts formatted exactly as in training). The checkpoints of one base model go in
    one pass: the base loaded once, each checkpoint's adapter beside it; a target that cannot join one goes
    alone (a pass of one), with the reason printed. In a pass, the built-in tasks run in tunelab's own batched
    loop and write the same .eval logs (without the per-sample event transcript: --inspect-loop keeps it)."""
    from tunelab.evaluate.sweep import evaluate_experiment

    with stdout_to_stderr(json_out):
        done = evaluate_experiment(experiment_dir, runs, epochs or None, force=force, console=console,
                                   ingest=not no_ledger, tasks=tasks, one_pass=not one_at_a_time, engine=engine,
                                   inspect_loop=inspect_loop)
    if json_out:
        from tunelab.mcp.models import EvalOut

        emit(EvalOut.of(done))
