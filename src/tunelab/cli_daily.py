"""Daily-use commands (export to trackers, archive): registered on the main app by `register`.

Kept apart from cli.py so each command stays a thin call into its module, and heavy libraries (mlflow)
are imported only when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tunelab.cli_common import console, friendly
from tunelab.errors import TunelabError

TRACKERS = ("mlflow", "wandb")


def export_cmd(
    experiment_dir: Path = typer.Argument(..., help="A scaffolded experiment directory."),
    to: str = typer.Option(..., "--to", help="The tracker: mlflow (wandb is not supported yet)."),
    tracking_uri: str = typer.Option("sqlite:///mlflow.db", "--tracking-uri",
                                     help="MLflow tracking URI: sqlite:///path.db, http(s)://server, or "
                                     "databricks."),
    mlflow_experiment: Optional[str] = typer.Option(None, "--mlflow-experiment",
                                                    help="MLflow experiment name (default: the spec's name)."),
) -> None:
    """One tracker run per tunelab run (params: resolved config and factors; metrics per step; eval scores),
    nested under one parent run for the sweep that holds the report. Exporting again adds only what is new."""
    if to not in TRACKERS:
        raise TunelabError(f"unknown tracker {to!r}: use {' or '.join(TRACKERS)}", field="--to")
    if to == "wandb":
        raise TunelabError("W&B export is not supported yet: export to MLflow (--to mlflow), or use "
                           "`tunelab results --json` with wandb's own API", field="--to")
    from tunelab.export.mlflow import export_mlflow

    result = export_mlflow(experiment_dir, tracking_uri, mlflow_experiment)
    console.print(f"MLflow {result.tracking_uri}: experiment {result.experiment_id}, sweep run "
                  f"{result.parent_run_id}; {len(result.created)} run(s) created, {len(result.updated)} brought up "
                  f"to date, {result.points_logged} metric point(s) logged", highlight=False, soft_wrap=True)


def archive_cmd(
    experiment_dir: Path = typer.Argument(..., help="A scaffolded experiment directory (no run training)."),
    to: Path = typer.Option(..., "--to", help="Archive root: the copy goes to <ARCHIVE>/<experiment dir name>/."),
    keep: str = typer.Option("adapters", "--keep", help="Checkpoints to keep, in the archive and here: adapters "
                             "(every epoch), last-epoch, or none."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be copied and removed; touch nothing."),
) -> None:
    """Copy what must be kept (spec, run configs, metrics, summaries, logs, eval scores and logs, ledger, report,
    the kept adapters) to the archive, verify every copy by sha256, and only then remove trainer state and the
    checkpoints not kept from finished runs here. Prints the storage saved; archive.json records it all."""
    from tunelab.archive import plan_archive, run_archive
    from tunelab.fsutil import human_bytes as size

    plan = plan_archive(experiment_dir, to, keep)
    for run, why in plan.untouched.items():
        console.print(f"[yellow]{run}[/yellow]: {why}", highlight=False)
    summary = (f"{len(plan.copy)} file(s), {size(plan.copy_bytes)} → {plan.archive_dir}; remove "
               f"{len(plan.remove)} dir(s) here, {size(plan.remove_bytes)} (keep: {keep})")
    if dry_run:
        console.print(f"dry run: would copy {summary}", highlight=False, soft_wrap=True)
        for rel in plan.remove:
            console.print(f"  would remove {rel} ({size(plan.sizes[rel])})", highlight=False, soft_wrap=True)
        return
    manifest = run_archive(plan)
    console.print(f"archived and verified (sha256) {len(manifest.files)} file(s), {size(manifest.bytes_archived)} "
                  f"in {manifest.archive_dir}", highlight=False, soft_wrap=True)
    console.print(f"storage saved here: {size(plan.remove_bytes)} ({len(plan.remove)} dir(s) removed"
                  + (f"; {size(manifest.bytes_removed)} by all archives of this experiment"
                     if manifest.bytes_removed != plan.remove_bytes else "") + ")", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the daily-use commands to the main app."""
    app.command("export")(friendly(export_cmd))
    app.command("archive")(friendly(archive_cmd))
