"""Daily-use commands (export to trackers, archive, init, compare), apart so each stays a thin call into its module and
heavy libraries (mlflow, wandb) are imported only when the command runs."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from tunelab.cli.common import add_commands, emit, json_option, print_plan, stdout_to_stderr
from tunelab.console import data_table, say, show
from tunelab.errors import TunelabError
from tunelab.init.answers import DEFAULTS, InitAnswers, commit, default_name, draft, parse_vary, propose_batch

TRACKERS = ("mlflow", "wandb")


def export_cmd(
    experiment_dir: Path = typer.Argument(..., help="A scaffolded experiment directory."),
    to: str = typer.Option(..., "--to", help="The tracker: mlflow, or wandb (offline runs for `wandb sync`)."),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri",
                                               help="MLflow tracking URI: sqlite:///path.db, http(s)://server, or "
                                               "databricks (default: sqlite:///<experiment>/mlflow/mlflow.db)."),
    mlflow_experiment: str | None = typer.Option(None, "--mlflow-experiment",
                                                    help="MLflow experiment name (default: the spec's name)."),
    wandb_dir: Path | None = typer.Option(None, "--wandb-dir", help="W&B: where the offline runs are written "
                                             "(default: <experiment>/wandb)."),
    project: str | None = typer.Option(None, "--project", help="W&B project (default: the spec's name)."),
    json_out: bool = json_option("what was exported"),
) -> None:
    """Export the runs to MLflow, or as offline W&B runs.

    One tracker run per tunelab run (params: resolved config and factors; metrics per step; eval scores).
    MLflow: nested under one parent run for the sweep that holds the report; exporting again adds only what is new.
    W&B: offline runs grouped as the sweep, each with the report; exporting again rewrites only changed runs."""
    from tunelab.mcp.models import ExportOut

    if to not in TRACKERS:
        raise TunelabError(f"unknown tracker {to!r}: use {' or '.join(TRACKERS)}", field="--to")
    if to == "wandb":
        from tunelab.export.wandb_offline import export_wandb

        with stdout_to_stderr(json_out):
            res = export_wandb(experiment_dir, wandb_dir, project)
        if json_out:
            emit(ExportOut(tracker=to, written=res.written, unchanged=res.unchanged, wandb_dir=str(res.wandb_dir),
                           project=res.project, group=res.group, sync_command=res.sync_command))
            return
        say("W&B offline runs in {} (project {}, group {}): {} run(s) written, {} unchanged", res.wandb_dir,
            res.project, res.group, len(res.written), len(res.unchanged))
        say("upload them with: {}", res.sync_command)
        return
    from tunelab.export.mlflow import export_mlflow

    with stdout_to_stderr(json_out):
        result = export_mlflow(experiment_dir, tracking_uri, mlflow_experiment)
    if json_out:
        emit(ExportOut(tracker=to, written=result.created, unchanged=result.updated, tracking_uri=result.tracking_uri,
                       experiment_id=result.experiment_id, parent_run_id=result.parent_run_id,
                       points_logged=result.points_logged))
        return
    say("MLflow {}: experiment {}, sweep run {}; {} run(s) created, {} brought up to date, {} metric point(s) "
        "logged", result.tracking_uri, result.experiment_id, result.parent_run_id, len(result.created),
        len(result.updated), result.points_logged)


def archive_cmd(
    experiment_dir: Path = typer.Argument(..., help="A scaffolded experiment directory (no run training)."),
    to: Path = typer.Option(..., "--to", help="Archive root: the copy goes to <ARCHIVE>/<experiment dir name>/."),
    keep: str = typer.Option("adapters", "--keep", help="Checkpoints to keep, in the archive and here: adapters "
                             "(every epoch), last-epoch, or none."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be copied and removed; touch nothing."),
    json_out: bool = json_option("what was (with --dry-run: would be) copied and removed"),
) -> None:
    """Copy what must be kept to an archive, verified, then free the disk here.

    Copy what must be kept (spec, run configs, metrics, summaries, logs, eval scores and logs, ledger, report,
    the kept adapters) to the archive, verify every copy by sha256, and only then remove trainer state and the
    checkpoints not kept from finished runs here. Prints the storage saved; archive.json records it all."""
    from tunelab.mcp.models import ArchiveOut

    with stdout_to_stderr(json_out):
        plan = _archive(experiment_dir, to, keep, dry_run)
    if json_out:
        emit(ArchiveOut(experiment_dir=str(plan.experiment_dir), archive_dir=str(plan.archive_dir), keep=keep,
                        dry_run=dry_run, copied=plan.copy, bytes_copied=plan.copy_bytes,
                        removed={rel: plan.sizes[rel] for rel in plan.remove}, bytes_removed=plan.remove_bytes,
                        untouched=plan.untouched))


def _archive(experiment_dir: Path, to: Path, keep: str, dry_run: bool):
    """Archive (or say what would be archived), saying what it does; the plan carried out."""
    from tunelab.export.archive import plan_archive, run_archive
    from tunelab.fsutil import human_bytes as size

    plan = plan_archive(experiment_dir, to, keep)
    for run, why in plan.untouched.items():
        say("[yellow]{}[/yellow]: {}", run, why)
    summary = (f"{len(plan.copy)} file(s), {size(plan.copy_bytes)} → {plan.archive_dir}; remove "
               f"{len(plan.remove)} dir(s) here, {size(plan.remove_bytes)} (keep: {keep})")
    if dry_run:
        say("dry run: would copy {}", summary)
        for rel in plan.remove:
            say("  would remove {} ({})", rel, size(plan.sizes[rel]))
        return plan
    manifest = run_archive(plan)
    say("archived and verified (sha256) {} file(s), {} in {}", len(manifest.files), size(manifest.bytes_archived),
        manifest.archive_dir)
    say("storage saved here: {} ({} dir(s) removed{})", size(plan.remove_bytes), len(plan.remove),
        f"; {size(manifest.bytes_removed)} by all archives of this experiment"
        if manifest.bytes_removed != plan.remove_bytes else "")
    return plan


def _propose_batch(answers, target_gpu, ask: bool) -> None:
    """Show the estimator's micro-batch, accumulation and packing for the target GPU (with its reasons) and
    put them in the answers when accepted (always, without prompts)."""
    if target_gpu is None:
        say("micro-batch: the spec's default (no GPU detected or named; --gpu NAME plans for one)")
        return
    if not answers.models or not answers.datasets:
        return  # draft() names what is missing
    proposal = propose_batch(answers, target_gpu)
    say("planner for {}: micro-batch {} × accumulation {}, packing {}", target_gpu.name, proposal.batch_size,
        proposal.gradient_accumulation_steps, "on" if proposal.packing else "off")
    for reason in proposal.reasons:
        say("  - {}", reason)
    if ask:
        from tunelab.init.interactive import confirm_batch

        if not confirm_batch():
            return
    answers.batch = proposal


def init_cmd(
    model: list[Path] | None = typer.Option(None, "--model", help="A base model directory (repeatable: "
                                               "several models are compared)."),
    dataset: list[Path] | None = typer.Option(None, "--dataset", help="A dataset file (repeatable)."),
    vary: list[str] | None = typer.Option(None, "--vary", help="A factor and its levels, e.g. lora_rank=4,16 "
                                             "(repeatable: the runs are every combination)."),
    gpus_per_run: int = typer.Option(DEFAULTS.gpus_per_run, "--gpus-per-run", help="0: CPU; 1: single device; more: distributed."),
    validation: bool = typer.Option(DEFAULTS.validation, "--validation/--no-validation", help="Track validation loss during "
                                    "training (about 4 times per epoch)."),
    controls: bool = typer.Option(DEFAULTS.controls, "--controls/--no-controls", help="Evaluate each base model without "
                                  "fine-tuning, to measure what fine-tuning adds."),
    epochs: int = typer.Option(DEFAULTS.epochs, "--epochs", help="Training epochs."),
    prompt: str = typer.Option(DEFAULTS.prompt, "--prompt", help="Prompt template, e.g. 'Capitalize: {input}' "
                               "(field rows need one; chat and prompt/completion rows do not: '' for none)."),
    name: str | None = typer.Option(None, "--name", help="Experiment name (default: the directory's name)."),
    out: Path = typer.Option(Path("."), "--out", help="Experiment directory, or the spec file (*.yaml) to write."),
    gpu: str | None = typer.Option(None, "--gpu", help="GPU the jobs will run on, for the estimates (e.g. "
                                      "H100-80GB); detected when present, else this machine's CPU."),
    models_dir: list[Path] | None = typer.Option(None, "--models-dir", help="Where to look for model "
                                                    "directories (interactive; also $TUNELAB_MODELS)."),
    interactive: bool | None = typer.Option(None, "--interactive/--no-interactive", help="Ask the questions "
                                               "(default: when this is a terminal and no --model is given)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing spec."),
    json_out: bool = json_option("the spec written and the runs it plans (asks nothing)"),
) -> None:
    """Write an experiment.yaml from answers, asked in a terminal or given as flags.

    Write experiment.yaml from answers: asked in a terminal (models and data found on disk offered, the
    planned runs previewed, written only when confirmed), or given as flags. The spec written passes
    `tunelab plan`."""
    from tunelab.catalog import detect_gpu, resolve_gpu

    ask = interactive if interactive is not None else (sys.stdin.isatty() and not model and not dataset
                                                       and not json_out)
    if ask and json_out:
        raise TunelabError("--json asks no questions: give the answers as flags (--model, --dataset, ...)",
                           field="--json")
    if ask:
        from tunelab.init.discover import models_roots
        from tunelab.init.interactive import ask_answers

        answers = ask_answers(out, models_roots(models_dir), Path.cwd(), gpu_known=bool(gpu or detect_gpu()))
    else:
        answers = InitAnswers(name=name or default_name(out), models=model or [], datasets=dataset or [],
                              vary=parse_vary(vary or []) or dict(DEFAULTS.vary), gpus_per_run=gpus_per_run,
                              validation=validation, controls=controls, epochs=epochs, prompt=prompt or None)
    if gpu:
        answers.gpu = resolve_gpu(gpu).name  # the spec names it: plan and scaffold later plan for it too
    with stdout_to_stderr(json_out):
        written = _write_spec(answers, out, ask, force)
    if json_out and written:
        from tunelab.mcp.models import SpecDraft

        emit(SpecDraft.of(str(written[0]), written[1]))


def _write_spec(answers, out: Path, ask: bool, force: bool):
    """Propose the batch, draft and show the plan, write the spec (when confirmed): (path, plan), or None."""
    from tunelab.catalog import detect_gpu, resolve_gpu
    from tunelab.init.answers import spec_path

    target_gpu = resolve_gpu(answers.gpu) if answers.gpu else detect_gpu()
    _propose_batch(answers, target_gpu, ask)
    tmp, plan = draft(answers, out, gpu=target_gpu, force=force)
    print_plan(plan)
    if ask:
        from tunelab.init.interactive import confirm_write

        if not confirm_write(spec_path(out)):
            tmp.unlink(missing_ok=True)
            say("nothing written")
            return None
    path = commit(tmp, out)
    say("wrote {0}; next: `tunelab scaffold {0}` then `tunelab run {1}`", path, path.parent)
    return path, plan


def compare_cmd(
    paths: list[Path] = typer.Argument(..., help="Experiment directories (all their runs) or run directories."),
    json_out: bool = json_option("the comparison"),
) -> None:
    """Show runs side by side: losses, scores and the config fields that differ.

    Runs side by side: losses and each task's score on the last evaluated checkpoint, then the config
    fields that differ between them (what can explain the differences)."""
    from tunelab.evaluate.kinds import show as score
    from tunelab.mcp.models import CompareOut
    from tunelab.report.compare import compare

    c = compare(paths)
    if json_out:
        emit(CompareOut.of(c))
        return
    show(data_table(("run", "type", "state", "final loss", "val loss", *c.tasks),
                    [(r.label, r.kind, r.state, score(r.final_loss, None), score(r.final_val_loss, None),
                      *[score(*r.scores.get(t, (None, None))) for t in c.tasks]) for r in c.runs],
                    title="scores and losses", overflow="fold"))
    if not c.differing:
        say("no config difference: the runs are configured alike")
        return
    show(data_table(("field", *[r.label for r in c.runs]),
                    [(key, *[r.differences[key] for r in c.runs]) for key in c.differing],
                    title="config differences", overflow="fold"))


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        say("tunelab {}", version("tunelab"))
        raise typer.Exit()


def main_callback(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                 help="Print tunelab's version and exit."),
) -> None:
    """Plan, run, evaluate and report sweeps of LoRA fine-tuning experiments."""


def register(app: typer.Typer) -> None:
    """Add the daily-use commands (and --version) to the main app."""
    app.callback()(main_callback)
    add_commands(app, {"export": export_cmd, "archive": archive_cmd, "init": init_cmd, "compare": compare_cmd})
