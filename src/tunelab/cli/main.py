"""The tunelab command line: a thin typer app; each command calls one module function."""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

import typer

from tunelab.cli import assistant as cli_assistant
from tunelab.cli import build as cli_build
from tunelab.cli import daily as cli_daily
from tunelab.cli import estimate as cli_estimate
from tunelab.cli import measure as cli_measure
from tunelab.cli import start as cli_start
from tunelab.cli import tune as cli_tune
from tunelab.cli.common import (
    SHOWN_ROWS,
    PipelineGroup,
    add_commands,
    emit,
    gpu_or_none,
    json_option,
    print_plan,
    stdout_to_stderr,
)
from tunelab.cli.evaluation import eval_cmd
from tunelab.compat import quiet_known_library_warnings
from tunelab.console import console, data_table, error, say, show
from tunelab.errors import TunelabError
from tunelab.spec.resources import ExecutorKind

# every command's process, whatever module it enters through (`eval` and the demo import tunelab.evaluate.sweep
# directly, never tunelab.evaluate's lazy names that used to install this): a known deprecation inside peft and
# trl, which read transformers' old name, is no message for the person at the terminal
quiet_known_library_warnings()

app = typer.Typer(
    help="Plan, run, evaluate and report sweeps of LoRA fine-tuning experiments.\n\n"
    "Pipeline: experiment.yaml → plan → scaffold → run → eval → results/report. "
    "`tunelab demo` runs all of it on a tiny local model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=PipelineGroup,  # --help: the commands in panels, in pipeline order
)


def plan_cmd(
    spec: Path = typer.Argument(..., help="experiment.yaml"),
    json_out: bool = typer.Option(False, "--json", help="Print the plan as JSON instead of a table."),
    gpu: str | None = typer.Option(None, "--gpu", help="Target GPU for memory/time estimates (e.g. H100-80GB); "
                                      "detected when present, else this machine's CPU."),
    write_md: bool | None = typer.Option(None, "--md/--no-md", help="Write plan.md beside the spec "
                                            "(default: yes, except with --json)."),
    probe: bool = typer.Option(False, "--probe", help="First run `tunelab probe` here: a few real steps of each "
                               "run shape, so the estimates are measured."),
    deadline: str | None = typer.Option(None, "--deadline", help="Wall-clock budget of the whole sweep (6h, "
                                           "90m, 1d): the verdict, makespan and levers in plan.md; overrides "
                                           "resources.deadline."),
) -> None:
    """Check models, data and tasks, estimate every run and write plan.md.

    Verify models, datasets and the eval task; show the runs with estimates (micro-batch, peak memory,
    steps, time, each with its source); write plan.md beside the spec."""
    from tunelab.fsutil import atomic_write_text
    from tunelab.plan.markdown import render_plan_md
    from tunelab.plan.planner import make_plan

    with stdout_to_stderr(json_out):
        if probe:
            from tunelab.cli.measure import run_probe

            run_probe(spec)
        plan = make_plan(spec, gpu=gpu_or_none(gpu, spec), deadline=deadline)
    path = None
    if write_md if write_md is not None else not json_out:
        path = atomic_write_text(plan.spec_path.parent / "plan.md", render_plan_md(plan))
    if json_out:
        from tunelab.mcp.models import PlanOut

        emit(PlanOut.of(plan, str(path) if path else None))
        return
    print_plan(plan)
    if path:
        say("wrote {}", path)


def scaffold_cmd(
    spec: Path = typer.Argument(..., help="experiment.yaml"),
    out: Path | None = typer.Option(None, "--out", help="Experiment directory (default: the spec's directory)."),
    force: bool = typer.Option(False, "--force", help="Overwrite run configs even where runs have results."),
    gpu: str | None = typer.Option(None, "--gpu", help="Target GPU for the estimates written into run.yaml "
                                      "(SLURM time limits); detected when present, else this machine's CPU."),
    json_out: bool = json_option("what was written"),
) -> None:
    """Write the run directories, job scripts and submit_all.sh of an experiment.

    Write runs/<run>/{run.yaml, job.sh, job.sbatch, eval.sbatch}, controls/, submit_all.sh, plan.md, README.md."""
    from tunelab.mcp.models import ScaffoldOut
    from tunelab.scaffold.write import scaffold

    with stdout_to_stderr(json_out):
        plan = scaffold(spec, out, force=force, gpu=gpu_or_none(gpu, spec))
    if json_out:
        emit(ScaffoldOut.of(plan, str))
        return
    say("scaffolded {} runs and {} controls in {}", len(plan.finetune_runs), len(plan.controls), plan.experiment_dir)


def train_cmd(run_yaml: Path = typer.Argument(..., help="A run's run.yaml (or its directory).")) -> None:
    """Train one run by hand; it is what the job scripts call.

    Train one run (this is what job scripts call). Resumes from the last checkpoint if there is one.
    Several processes per run (resources.nproc_per_run / gpus_per_run): re-launched under torchrun.
    The job is a program of its own (`python -m tunelab.train.job`), the same however it is started."""
    # `tunelab train RUN_YAML` never reaches this app (tunelab/entry.py runs the job directly); other forms do
    os.execv(sys.executable, [sys.executable, "-m", "tunelab.train.job", str(run_yaml)])


def pack_job_cmd(
    experiment_dir: Path = typer.Argument(..., help="The experiment directory."),
    runs: str = typer.Option(..., "--runs", help="Comma-separated run names this node job trains."),
) -> None:
    """Inside a Slurm node job (resources.slurm.pack: node): train these runs on the job's GPUs with the local
    scheduler, then evaluate them; the coordinator's ledger, not this job, records jobs."""
    from tunelab.evaluate.sweep import evaluate_experiment
    from tunelab.execute.local_jobs import LocalExecutor
    from tunelab.execute.sweep import run_sweep

    names = [n for n in runs.split(",") if n]
    run_sweep(LocalExecutor(), experiment_dir, names, console=console, record=False)
    evaluate_experiment(experiment_dir, names, console=console, ingest=False)


def run_cmd(
    experiment_dir: Path = typer.Argument(..., help="A scaffolded experiment directory."),
    runs: list[str] | None = typer.Option(None, "--run", help="Only these runs (repeatable)."),
    force: bool = typer.Option(False, "--force", help="Rerun completed runs from scratch."),
    executor: ExecutorKind | None = typer.Option(None, "--executor", help="local, slurm or ray (default: "
                                                    "the spec's resources.executor)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="slurm: print what would be submitted, submit nothing."),
    wait: bool = typer.Option(False, "--wait", help="slurm: follow the jobs until all have ended, applying retries."),
    no_checks: bool = typer.Option(False, "--no-checks", help="Start without validate's checks (memory, data, the "
                                   "disk space the runs need): e.g. where space will be freed while they train."),
    json_out: bool = json_option("each run started and its state when the command returns"),
) -> None:
    """Train the pending runs, locally or as Slurm jobs.

    Train pending runs: locally (on a CPU resources.cpu_runs_at_once side by side, as the plan chose; one per GPU), or as Slurm jobs with an evaluation
    job after each (afterok). Completed, queued and running runs are skipped. Before the first job starts,
    the runs to start pass `tunelab validate`'s checks (predicted OOM, data, warm-up, the free space and
    quota of the experiment's filesystem), or nothing starts. With a tune: block, runs whose learning rate no
    search has chosen get their combination's search first, as `tunelab tune` runs it (trials are real runs on
    the same executor; Slurm: run waits for them), and are scaffolded at the rate it chose: no run trains at the
    spec's default rate for a report to take as tuned. --dry-run cannot search: it refuses, naming `tunelab tune`."""
    from tunelab.cli.tune import search_before_run
    from tunelab.execute.executors import check_options, executor_named
    from tunelab.execute.status import not_completed
    from tunelab.execute.sweep import run_sweep
    from tunelab.rundir.experiment import load_runs

    ex = executor_named(executor.value if executor else load_runs(experiment_dir)[0].resources.executor)
    check_options(ex, dry_run, wait)
    if not no_checks:
        from tunelab.plan.validate import checks_before_run

        problems = checks_before_run(experiment_dir, runs, force)
        for line in problems:
            error(line)
        if problems:
            raise typer.Exit(1)
    with stdout_to_stderr(json_out):
        search_before_run(experiment_dir, runs, force, ex, dry_run)  # a tune: block's search, where not done yet
        from tunelab.scaffold.write import unedited_job_script

        # a lane's later jobs forked from one import where their job.sh is scaffold's (local: Executor.warm_starts)
        results = run_sweep(ex, experiment_dir, runs, force=force, dry_run=dry_run, wait=wait, console=console,
                            warm_if=unedited_job_script)
    if json_out:
        from tunelab.mcp.models import RunOut

        emit(RunOut(experiment_dir=str(experiment_dir), submitted=list(results), pid=None, log=None,
                    states=dict(results)))
    if dry_run or (ex.detached and not wait):
        return  # nothing ended here to judge
    lines = not_completed(experiment_dir, results, "`tunelab status`" if ex.detached else "runs/<run>/train.log")
    for line in lines:  # each run's own reason, then the count
        error(line)
    if lines:
        raise typer.Exit(1)


def results_cmd(
    experiment_dir: Path = typer.Argument(..., help="A scaffolded experiment directory."),
    json_out: bool = json_option("every run with every checkpoint × task × metric"),
    csv_out: bool = typer.Option(False, "--csv", help="CSV: one row per run; <task>.<metric> columns of the last "
                                 "checkpoint, and `evals` with every checkpoint × task × metric."),
    show_all: bool = typer.Option(False, "--all", help=f"List every run in the table (above {SHOWN_ROWS}, the "
                                  f"first {SHOWN_ROWS}; --json and --csv always hold all)."),
) -> None:
    """List the state, training metrics and eval scores of every run.

    State, training metrics and eval scores of every run, control and eval-only run (from the ledger)."""
    from tunelab.evaluate.kinds import show_ci
    from tunelab.ledger.results import collect_results, to_csv

    if json_out and csv_out:
        raise TunelabError("choose one of --json and --csv", field="--json/--csv")
    rows = collect_results(experiment_dir)
    if json_out:
        from tunelab.mcp.models import ResultsOut

        emit(ResultsOut.of(rows))
    elif csv_out:
        sys.stdout.write(to_csv(rows))
    else:
        tasks = list(dict.fromkeys(e.task for r in rows for e in r.evals))
        table = []
        for r in rows if show_all else rows[:SHOWN_ROWS]:
            cells = {e.task: show_ci(e.score, e.score_bounds(), e.primary_metric) for e in r.last_evals()}
            table.append([r.name, r.kind, r.state, str(r.steps or "—"),
                          f"{r.final_loss:.4f}" if r.final_loss is not None else "—",
                          f"{r.final_val_loss:.4f}" if r.final_val_loss is not None else "—",
                          *[cells.get(t, "—") for t in tasks]])
        show(data_table(("run", "type", "state", "steps", "final loss", "val loss", *tasks), table,
                        title=str(experiment_dir)))
        if len(rows) > SHOWN_ROWS and not show_all:
            say("… and {} more runs (--all, --json or --csv for all)", len(rows) - SHOWN_ROWS)


def report_cmd(
    experiment_dir: Path = typer.Argument(..., help="A scaffolded experiment directory."),
    open_: bool = typer.Option(False, "--open", help="Open report.html in the default browser."),
    json_out: bool = json_option("the files written"),
) -> None:
    """Write report.md and a self-contained report.html, mid-sweep too.

    Write report/report.md and a self-contained report/report.html (+ report/figures/): status,
    checkpoints, training, evaluation, findings, storage, issues, next steps. Works mid-sweep (partial)."""
    from tunelab.report.build import build_report, open_in_browser

    with stdout_to_stderr(json_out):
        files = build_report(experiment_dir)
    if json_out:
        from tunelab.mcp.models import ReportOut

        emit(ReportOut.of(files, str))
        return
    say("report: {}", files.markdown)
    say("report: {}" + (" [yellow](partial: the sweep is not finished)[/yellow]" if files.partial else ""),
        files.html)
    if open_ and not open_in_browser(files.html):
        say("[dim]no browser to open; open the file above yourself[/dim]")


def status_cmd(
    experiment_dir: Path = typer.Argument(..., help="A scaffolded experiment directory."),
    watch: bool = typer.Option(False, "--watch", help="Live table (progress bar, loss, tokens/s, ETA per run, the "
                               "sweep's time left against its deadline, failures and the deadline's warning as they "
                               "happen) until no job is queued or running."),
    json_out: bool = json_option("every run and control (and whether the sweep is done)"),
    interval: float = typer.Option(5.0, "--interval", min=0.1, help="--watch: seconds between two looks."),
    show_all: bool = typer.Option(False, "--all", help=f"List every run; above {SHOWN_ROWS} runs the table "
                                  "lists the ones not completed (and counts every state)."),
) -> None:
    """Show each run's state, progress and ETA, the sweep's time left, and why a job failed.

    State of every run: scheduler (squeue + sacct), progress and ETA from the run's files (its live pace), and
    why a job failed (OOM, TIMEOUT, PREEMPTED, NODE_FAIL, CANCELLED, FAILED with exit code). The sweep is
    re-planned at every look: its remaining makespan (P10–P90) on its devices against resources.deadline, and as
    soon as the deadline is no longer met at P90, what would have to give."""
    from tunelab.execute.status import RowState, eval_label, failure_lines, status_rows

    def replan(rows) -> tuple[str, str]:
        """The sweep re-planned from these rows: its line and, once the deadline's P90 misses, its warning."""
        remaining = replanned(experiment_dir, rows)
        return (remaining.line, remaining.warning) if remaining is not None else ("", "")

    def table(rows):
        nodes = any(r.node for r in rows)  # where a scheduler's jobs run (a local sweep's run here: no column)
        return data_table(("run", "type", "state", "job", *(("node",) if nodes else ()), "attempt", "progress", "ETA",
                           "eval", "detail"),
                          [(r.name, r.type, r.shown, r.job_id or "—", *((r.node or "—",) if nodes else ()), r.attempt,
                            r.progress, r.eta, eval_label(r.eval) or "—", r.detail) for r in rows],
                          title=str(experiment_dir), overflow="fold")

    from tunelab.mcp.models import StatusOut, replanned

    rows = status_rows(experiment_dir)
    if json_out:
        emit(StatusOut.of(str(experiment_dir), rows, remaining=replanned(experiment_dir, rows)))
        return
    if not watch:
        listed = rows if show_all or len(rows) <= SHOWN_ROWS else [r for r in rows if r.state != RowState.COMPLETED]
        listed = listed if show_all else listed[:SHOWN_ROWS]
        show(table(listed))
        for line in failure_lines(rows):  # why each run that ended badly did: its own one line
            say("[red]{}[/red]", line)
        cli_tune.tuning_lines(experiment_dir)
        if len(listed) < len(rows):
            counts = Counter(r.state.label for r in rows)
            say("{} runs: {}; {} not listed (--all lists every run)", len(rows),
                ", ".join(f"{n} {k}" for k, n in counts.most_common()), len(rows) - len(listed))
        line, warning = replan(rows)
        if line:
            say("{}", line)
        if warning:
            say("[yellow]{}[/yellow]", warning)
        return
    from tunelab.execute.watch import watch as watch_live

    watch_live(experiment_dir, lambda: status_rows(experiment_dir), console, interval, replan)


def cancel_cmd(
    experiment_dir: Path = typer.Argument(..., help="A scaffolded experiment directory."),
    runs: list[str] | None = typer.Argument(None, help="Runs or controls to cancel (default: all)."),
    json_out: bool = json_option("the job ids cancelled"),
) -> None:
    """Cancel the queued or running jobs of some runs.

    Cancel the queued or running jobs of some runs, Slurm (scancel) or local (SIGTERM: the trainer saves
    first); the ledger and status say CANCELLED."""
    from tunelab.execute.status import cancel
    from tunelab.mcp.models import CancelOut

    with stdout_to_stderr(json_out):
        jobs = cancel(experiment_dir, runs or None, console=console)
    if json_out:
        emit(CancelOut(cancelled_jobs=jobs))


def ingest_cmd(
    paths: list[Path] = typer.Argument(..., help="Log files or directories: searched for torchtune / SLURM logs "
                                       "(*.out, *.log) and HF Trainer output dirs (trainer_state.json: TRL, "
                                       "axolotl, LLaMA-Factory)."),
    gpu: str | None = typer.Option(None, "--gpu", help="The GPU these runs used (logs do not say)."),
    json_out: bool = json_option("every log found, imported or skipped"),
) -> None:
    """Import past torchtune, Slurm and HF Trainer runs into the history ledger.

    Import past torchtune / SLURM runs and HF Trainer output dirs into the history ledger so plans learn
    from them (`tunelab history` lists them).
    Truncated, failed or unknown logs are reported and skipped, never half-imported."""
    from tunelab.catalog import resolve_gpu
    from tunelab.ingest import ingest_logs
    from tunelab.ledger.history import history_path

    device = resolve_gpu(gpu).name if gpu else None
    with stdout_to_stderr(json_out):
        results = ingest_logs(paths, device)
    if json_out:
        from tunelab.mcp.models import IngestOut

        emit(IngestOut.of(results, str))
        return
    for r in results:
        mark = "[green]imported[/green]" if r.imported else "[yellow]skipped[/yellow]"
        say(mark + " {}: {}", r.path, r.reason)
    n = sum(r.imported for r in results)
    say("{} of {} log(s) imported into {}", n, len(results), history_path())


def register(app: typer.Typer) -> None:
    """The pipeline's commands: plan, scaffold, run (and train, what its jobs call), eval, results, report;
    status and cancel of the jobs; ingest (schema and demo: cli/start.py)."""
    add_commands(app, {"plan": plan_cmd, "scaffold": scaffold_cmd, "train": train_cmd})
    add_commands(app, {"pack-job": pack_job_cmd}, hidden=True)
    add_commands(app, {"run": run_cmd, "eval": eval_cmd, "results": results_cmd, "report": report_cmd,
                       "status": status_cmd, "cancel": cancel_cmd, "ingest": ingest_cmd})


# Every command module adds its commands the same way (`register`), in the order `--help` lists them.
for _module_register in (cli_daily.register, cli_estimate.register, cli_measure.register, cli_tune.register, register,
                         cli_start.register, cli_build.register, cli_assistant.register):
    _module_register(app)

if __name__ == "__main__":  # pragma: no cover
    app()
