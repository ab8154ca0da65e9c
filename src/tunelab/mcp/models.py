"""What the tools return: pydantic models, so each tool's output schema is generated, not hand-written.
Rows the CLI already types (StatusRow, RunCheck, AdoptResult's fields) are reused as they are."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from tunelab.errors import TunelabError
from tunelab.execute.status import EvalState, RowState, StatusRow, eval_failed
from tunelab.forecast.deadline import DeadlinePlan, SweepForecast
from tunelab.forecast.remaining import Phase, SweepRemaining, sweep_remaining
from tunelab.forecast.tunecost import SearchCost
from tunelab.ledger.history import HistoryRun
from tunelab.ledger.results import TYPES, RunRecord
from tunelab.plan.validate import RunCheck
from tunelab.rundir.estimate import RunEstimate
from tunelab.rundir.layout import RunState

if TYPE_CHECKING:
    from tunelab.adopt.write import AdoptResult
    from tunelab.ingest import IngestResult
    from tunelab.plan.planner import Plan
    from tunelab.report.build import ReportFiles
    from tunelab.report.compare import Comparison
    from tunelab.rundir.scores import TaskScores

Shown = Callable[["Path"], str]  # how a path is written: relative to the root (MCP), as it is (CLI)


class SpecDraft(BaseModel):
    """init_spec / `init --json`: the experiment.yaml written and the runs it plans."""

    spec: str = Field(description="Path of experiment.yaml written (relative to the root under MCP).")
    runs: list[str] = Field(description="The fine-tuned runs it plans, in design order.")
    controls: list[str] = Field(description="The base-model controls it plans.")
    warnings: list[str] = Field(description="The plan's warnings, one line each.")

    @classmethod
    def of(cls, spec: str, plan: Plan) -> SpecDraft:
        return cls(spec=spec, runs=[r.name for r in plan.finetune_runs], controls=[r.name for r in plan.controls],
                   warnings=list(plan.warnings))


class PlanOut(BaseModel):
    """plan / estimate: every run with its estimates (each with its source), and plan.md when written."""

    experiment: str = Field(description="The spec's name.")
    recipe: str = Field(description="How the runs train (device, processes, precision), in words.")
    gpu: str | None = Field(description="The GPU estimated for (None: this machine's CPU).")
    runs: list[dict[str, str]] = Field(description="One row per run, the columns of `tunelab plan`.")
    stages: list[dict[str, str]] = Field(default_factory=list, description="A staged run's stages, one row each.")
    estimates: dict[str, RunEstimate | None] = Field(description="Per run: micro-batch, peak memory, steps, time "
                                                     "and where each figure came from; processes and nodes; where "
                                                     "the run does not fit its GPUs, gpus_needed: the fewest GPUs "
                                                     "that fit, their nodes and the time on them.")
    totals: dict[str, Any] = Field(description="The sweep's totals: the runs' summed time, the runs without one, "
                                   "GPU-hours (the wall time of the sweep: forecast).")
    warnings: list[str] = Field(description="The plan's warnings, one line each.")
    plan_md: str | None = Field(default=None, description="plan.md written (None when not written).")
    deadline: DeadlinePlan | None = Field(default=None, description="With resources.deadline or --deadline: the "
                                          "sweep's predicted makespan against it (training with the levers, "
                                          "evaluation, start-up, placement; with tune: the search still to run, "
                                          "first), the verdict, every figure's source and what would have to give "
                                          "(fewer trials or a smaller budget among them).")
    forecast: SweepForecast | None = Field(default=None, description="The sweep's predicted makespan (P50, P10-P90) "
                                           "and where each run goes, with or without a deadline: the makespan "
                                           "plan.md and the terminal show (None: no run has a time estimate).")
    cpu_sharing: str | None = Field(default=None, description="Runs on this machine's CPU: how many train side by "
                                    "side with how many threads each, and why (the options' predicted makespans): "
                                    "plan.md's CPU line. None on a GPU or a detached executor.")
    search: list[SearchCost] = Field(default_factory=list, description="With tune: each combination's learning-rate "
                                     "search priced: trials × (start-up + the share of the budget successive "
                                     "halving is expected to train × the run's predicted training time), with its "
                                     "interval; unpruned_s: every trial to its budget.")

    @classmethod
    def of(cls, plan: Plan, plan_md: str | None = None) -> PlanOut:
        from tunelab.plan.markdown import plan_rows, stage_rows

        return cls(experiment=plan.spec.name, recipe=plan.recipe, gpu=plan.gpu.name if plan.gpu else None,
                   runs=plan_rows(plan), stages=stage_rows(plan),
                   estimates=dict(plan.estimates),
                   totals=json.loads(json.dumps(plan.totals(), default=str)), warnings=list(plan.warnings),
                   plan_md=plan_md, deadline=plan.deadline, search=plan.search,
                   forecast=SweepForecast.of(plan.forecast) if plan.forecast is not None else None,
                   cpu_sharing=plan.cpu_sharing.line() if plan.cpu_sharing is not None else None)


class ValidateOut(BaseModel):
    """validate / `validate --json`: every run's checks (the CLI exits 1 when ok is false)."""

    ok: bool = Field(description="False when any run has an error (would OOM, missing field, ...).")
    checks: list[RunCheck] = Field(description="One per run checked (a spec's fine-tuned runs, in design order).")

    @classmethod
    def of(cls, checks: list[RunCheck]) -> ValidateOut:
        return cls(ok=not any(c.errors for c in checks), checks=checks)


class ProbeOut(BaseModel):
    """probe / `probe --json`: the history rows recorded."""

    shapes: list[HistoryRun] = Field(description="One history row per run shape probed.")


class ScaffoldOut(BaseModel):
    """scaffold / `scaffold --json`: what was written."""

    experiment_dir: str = Field(description="The experiment directory the runs were written in.")
    runs: list[str] = Field(description="Fine-tuned runs scaffolded (runs/<run>/), in design order.")
    controls: list[str] = Field(description="Base-model controls scaffolded (controls/<control>/).")

    @classmethod
    def of(cls, plan: Plan, shown: Shown) -> ScaffoldOut:
        return cls(experiment_dir=shown(plan.experiment_dir), runs=[r.name for r in plan.finetune_runs],
                   controls=[r.name for r in plan.controls])


class RunOut(BaseModel):
    """run: the sweep started in the background; follow it with status. `run --json`: the sweep run here."""

    experiment_dir: str = Field(description="The experiment directory.")
    submitted: list[str] = Field(description="Runs the sweep will train (pending ones; completed are skipped).")
    pid: int | None = Field(description="The background `tunelab run` process (None: nothing to run, or "
                                        "`run --json`, which is that process).")
    log: str | None = Field(description="Its output, relative to the root (None from `run --json`).")
    states: dict[str, RowState] = Field(default_factory=dict, description="`run --json`: run → its state when the "
                                   "command returned, as `status` names it (the MCP tool returns at once: empty).")


class StatusOut(BaseModel):
    """status / `status --json`: every run and control, and whether anything is still queued or running."""

    experiment_dir: str = Field(description="The experiment directory.")
    sweep_running: bool = Field(description="A sweep this MCP server started is still running (always false "
                                            "from the CLI, which starts none in the background).")
    done: bool = Field(description="Nothing is queued or running: no active job and no background sweep.")
    runs: list[StatusRow] = Field(description="One row per run and control, in design order.")
    sweep_log_tail: list[str] = Field(default_factory=list, description="Last lines of the background sweep's log "
                                      "(empty from the CLI).")
    remaining: SweepRemaining | None = Field(None, description="The sweep re-planned now: each run's time left "
                                             "(live pace), the remaining makespan P10–P90 on the sweep's devices, "
                                             "the deadline's verdict and, once its P90 misses, what would have to "
                                             "give (None: no experiment.yaml to re-plan from).")
    tuning: list[str] = Field(default_factory=list, description="The learning-rate search's progress (`tune`), a "
                              "line per combination: its trials by state and the rate chosen (empty: no search).")

    @classmethod
    def of(cls, experiment_dir: str, rows: list[StatusRow], running: bool = False,
           log_tail: list[str] | None = None, remaining: SweepRemaining | None = None,
           tuning: list[str] | None = None) -> StatusOut:
        return cls(experiment_dir=experiment_dir, sweep_running=running, runs=rows,
                   done=not running and not any(r.active for r in rows), sweep_log_tail=log_tail or [],
                   remaining=remaining, tuning=tuning or [])


class TuneOut(BaseModel):
    """tune: the learning-rate search started in the background; follow it with status (its `tuning` lines)."""

    experiment_dir: str = Field(description="The experiment directory.")
    pid: int = Field(description="The background `tunelab tune` process.")
    log: str = Field(description="Its output, relative to the root.")
    tuning: list[str] = Field(description="The search's progress when it started (a resumed search: its trials so "
                              "far), a line per combination.")


def phase_of(row: StatusRow) -> Phase:
    """A status row as the re-plan reads it: done once trained (or a control) and scored; evaluating once trained;
    training while its job runs; stopped when it ended badly; else waiting."""
    if row.state == RowState.COMPLETED:
        if row.eval == EvalState.SCORED:
            return Phase.DONE
        return Phase.STOPPED if eval_failed(row.eval) else Phase.EVALUATING
    if row.state.ended_badly:
        return Phase.STOPPED
    if row.state == RowState.RUNNING:
        return Phase.TRAINING if row.type == TYPES["finetune"] else Phase.EVALUATING
    return Phase.WAITING


def replanned(experiment_dir: Path, rows: list[StatusRow]) -> SweepRemaining | None:
    """The sweep's remaining time from these rows (None where the experiment has no spec to re-plan from)."""
    try:
        return sweep_remaining(experiment_dir, {r.name: phase_of(r) for r in rows})
    except TunelabError:
        return None


class CancelOut(BaseModel):
    cancelled_jobs: list[str] = Field(description="Job ids cancelled (empty: nothing was queued or running).")


class EvalScore(BaseModel):
    """One task scored on one checkpoint (or a control's base model) by this evaluation."""

    label: str = Field(description="epoch_N, base (a control) or checkpoint (an eval-only run).")
    epoch: int | None = Field(description="The checkpoint's epoch (None: base model or eval-only).")
    task: str = Field(description="The task of eval.tasks.")
    metric: str = Field(description="The task's primary metric.")
    score: float | None = Field(description="The primary metric's value (None: not computable).")
    samples: int = Field(description="Samples scored.")

    @classmethod
    def of(cls, s: TaskScores) -> EvalScore:
        return cls(label=s.label, epoch=s.epoch, task=s.task, metric=s.primary_metric, score=s.score,
                   samples=s.samples)


class EvalOut(BaseModel):
    """eval / `eval --json`: what this call evaluated (checkpoints that already had scores are skipped)."""

    evaluated: dict[str, list[EvalScore]] = Field(description="Run → every task scored now on each of its "
                                                  "checkpoints.")

    @classmethod
    def of(cls, done: dict[str, list[TaskScores]]) -> EvalOut:
        return cls(evaluated={run: [EvalScore.of(s) for s in scores] for run, scores in done.items()})


class ResultRow(BaseModel):
    """One run as `results --json` prints it (keys stable); `eval` holds every checkpoint × task × metric."""

    name: str = Field(description="The run, control or eval-only run.")
    type: str = Field(description="fine-tuned, control or eval-only.")
    model: str = Field(description="Its base model's name in the spec.")
    dataset: str = Field(description="Its dataset's name in the spec.")
    factors: dict[str, Any] = Field(description="The swept values that made it (model and dataset excluded).")
    state: RunState = Field(description="The state its files say (the ledger's): completed, failed, interrupted, "
                                        "... (`status` adds the verdict on its job: oom, timeout, ...).")
    final_loss: float | None = Field(description="Last training loss.")
    final_val_loss: float | None = Field(description="Last validation loss.")
    steps: int | None = Field(description="Optimizer steps trained.")
    duration_s: float | None = Field(description="Training wall-clock, seconds.")
    tokens_per_s: float | None = Field(description="Training throughput.")
    peak_memory_gib: float | None = Field(description="Peak memory measured by the job.")
    score: float | None = Field(description="The headline: the first task's primary metric on the last evaluated "
                                            "checkpoint.")
    score_ci: list[float] | None = Field(description="Its 95 % interval [low, high].")
    score_task: str | None = Field(description="The headline's task.")
    score_metric: str | None = Field(description="The headline's metric.")
    scores: dict[str, float | None] = Field(description="Task → primary metric on the last evaluated checkpoint.")
    eval: list[dict[str, Any]] = Field(description="Every checkpoint × task: label, epoch, task, samples, "
                                                   "primary_metric, score, metrics, intervals, stage.")
    run_dir: str = Field(description="The run's directory.")
    error: str | None = Field(description="Why it failed, when it did.")


class ResultsOut(BaseModel):
    """results / `results --json` (and each experiment's results.json resource)."""

    runs: list[ResultRow] = Field(description="One row per run, control and eval-only run, in design order.")

    @classmethod
    def of(cls, records: list[RunRecord]) -> ResultsOut:
        return cls(runs=[ResultRow.model_validate(json.loads(json.dumps(r.to_json(), default=str)))
                         for r in records])


class ReportOut(BaseModel):
    """report / `report --json`: the files written."""

    markdown: str = Field(description="report/report.md.")
    html: str = Field(description="report/report.html (self-contained).")
    figures: list[str] = Field(description="The figures under report/figures/.")
    partial: bool = Field(description="The sweep is not finished; the report says so.")
    resource: str | None = Field(default=None, description="The MCP resource URI of report.md (None from the "
                                 "CLI).")

    @classmethod
    def of(cls, files: ReportFiles, shown: Shown, resource: str | None = None) -> ReportOut:
        return cls(markdown=shown(files.markdown), html=shown(files.html), figures=[shown(f) for f in files.figures],
                   partial=files.partial, resource=resource)


class HistoryOut(BaseModel):
    """history / `history --json`: what the planner knows from past runs."""

    rows: list[HistoryRun] = Field(description="Every history row (measured, probed or ingested), oldest first.")


class IngestRow(BaseModel):
    path: str = Field(description="A log file or output directory found.")
    imported: bool = Field(description="Recorded in the history (False: skipped, whole).")
    reason: str = Field(description="What was imported, or why it was skipped.")


class IngestOut(BaseModel):
    """ingest / `ingest --json`: every log found, imported or skipped."""

    logs: list[IngestRow] = Field(description="One row per log found.")

    @classmethod
    def of(cls, results: list[IngestResult], shown: Shown) -> IngestOut:
        return cls(logs=[IngestRow(path=shown(r.path), imported=r.imported, reason=r.reason) for r in results])


class AdoptOut(BaseModel):
    """adopt / `adopt --json`: the runs brought into the experiment."""

    experiment_dir: str = Field(description="The experiment directory created or added to.")
    adopted: list[str] = Field(description="Runs adopted (names in the experiment).")
    problems: list[str] = Field(description="Sources skipped, each with why.")

    @classmethod
    def of(cls, result: AdoptResult, shown: Shown) -> AdoptOut:
        return cls(experiment_dir=shown(result.experiment_dir), adopted=list(result.adopted),
                   problems=list(result.problems))


class PathList(BaseModel):
    """list_models / list_datasets: paths relative to the root where inside it."""

    paths: list[str]


# ---- outputs of the commands no tool has (yet): `--json` of compare, export, archive and the builders --------

class ComparedScore(BaseModel):
    score: float | None = Field(description="The task's primary metric on the run's last evaluated checkpoint.")
    metric: str | None = Field(description="Which metric that is.")


class ComparedRunOut(BaseModel):
    run: str = Field(description="<experiment dir name>/<run> (the full path where two compared dirs share a name).")
    type: str = Field(description="finetune, control or eval_only.")
    state: RunState = Field(description="The run's state, as its files say it (the ledger's).")
    final_loss: float | None = Field(description="Last training loss.")
    final_val_loss: float | None = Field(description="Last validation loss.")
    scores: dict[str, ComparedScore] = Field(description="Task → its primary score.")
    differences: dict[str, str] = Field(description="Config field → this run's value, for every field in "
                                        "`differing` (— where the run has no such field).")


class CompareOut(BaseModel):
    """`compare --json`: runs side by side and the resolved config fields that differ between them."""

    tasks: list[str] = Field(description="Tasks any compared run was scored on.")
    differing: list[str] = Field(description="Flat run.yaml fields (section.field) whose values differ.")
    runs: list[ComparedRunOut] = Field(description="One row per run, in the order given.")

    @classmethod
    def of(cls, c: Comparison) -> CompareOut:
        return cls(tasks=c.tasks, differing=c.differing, runs=[
            ComparedRunOut(run=r.label, type=r.kind, state=r.state, final_loss=r.final_loss,
                           final_val_loss=r.final_val_loss, differences=r.differences,
                           scores={t: ComparedScore(score=s, metric=m) for t, (s, m) in r.scores.items()})
            for r in c.runs])


class ExportOut(BaseModel):
    """`export --json`: what one export wrote to the tracker (fields of the other tracker are null)."""

    tracker: str = Field(description="mlflow or wandb.")
    written: list[str] = Field(description="Runs given a new tracker run or rewritten (MLflow: created; W&B: "
                                           "new or changed).")
    unchanged: list[str] = Field(description="Runs already exported (MLflow: brought up to date with new points "
                                             "only; W&B: identical, skipped).")
    tracking_uri: str | None = Field(default=None, description="MLflow: the tracking URI written to.")
    experiment_id: str | None = Field(default=None, description="MLflow: the experiment's id.")
    parent_run_id: str | None = Field(default=None, description="MLflow: the sweep's parent run.")
    points_logged: int | None = Field(default=None, description="MLflow: metric points logged by this export.")
    wandb_dir: str | None = Field(default=None, description="W&B: the directory of the offline runs.")
    project: str | None = Field(default=None, description="W&B: the project.")
    group: str | None = Field(default=None, description="W&B: the group (the sweep).")
    sync_command: str | None = Field(default=None, description="W&B: the command that uploads them.")


class ArchiveOut(BaseModel):
    """`archive --json`: what was (with dry_run: would be) copied, verified and removed."""

    experiment_dir: str = Field(description="The experiment archived.")
    archive_dir: str = Field(description="<ARCHIVE>/<experiment dir name>.")
    keep: str = Field(description="Checkpoints kept: adapters, last-epoch or none.")
    dry_run: bool = Field(description="True: nothing was copied or removed.")
    copied: list[str] = Field(description="Files copied (and verified by sha256 unless dry_run), relative to the "
                                          "experiment directory.")
    bytes_copied: int = Field(description="Their total size.")
    removed: dict[str, int] = Field(description="Directory (relative) → bytes freed here (would be, with dry_run).")
    bytes_removed: int = Field(description="Bytes freed here by this archive (would be, with dry_run).")
    untouched: dict[str, str] = Field(description="Run → why nothing of it is removed.")


class BuiltOut(BaseModel):
    """`--json` of data capitalization / organism, models tiny / smollm2 / random and skills install."""

    paths: list[str] = Field(description="What was written (a dataset file, a model directory, skill folders).")
    built: bool = Field(default=True, description="False: the path already held it and nothing was written.")
    parameters: int | None = Field(default=None, description="A model's parameter count.")
