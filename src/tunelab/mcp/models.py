"""What the tools return: pydantic models, so each tool's output schema is generated, not hand-written.
Rows the CLI already types (StatusRow, RunCheck, AdoptResult's fields) are reused as they are."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from tunelab.execute.status import StatusRow
from tunelab.plan.validate import RunCheck


class SpecDraft(BaseModel):
    """init_spec: the experiment.yaml written and the runs it plans."""

    spec: str = Field(description="Path of experiment.yaml, relative to the root.")
    runs: list[str]
    controls: list[str]
    warnings: list[str]


class PlanOut(BaseModel):
    """plan / estimate: every run with its estimates (each with its source), and plan.md when written."""

    experiment: str
    recipe: str
    gpu: str | None
    runs: list[dict[str, str]] = Field(description="One row per run, the columns of `tunelab plan`.")
    stages: list[dict[str, str]] = Field(default_factory=list, description="A staged run's stages, one row each.")
    estimates: dict[str, dict[str, Any] | None] = Field(description="Per run: micro-batch, peak memory, steps, "
                                                         "time and where each figure came from.")
    totals: dict[str, Any]
    warnings: list[str]
    plan_md: str | None = None


class ValidateOut(BaseModel):
    ok: bool = Field(description="False when any run has an error (would OOM, missing field, ...).")
    checks: list[RunCheck]


class ProbeOut(BaseModel):
    shapes: list[dict[str, Any]] = Field(description="One row per run shape probed, as `probe --json` prints.")


class ScaffoldOut(BaseModel):
    experiment_dir: str
    runs: list[str]
    controls: list[str]


class RunOut(BaseModel):
    """run: the sweep started in the background; follow it with status."""

    experiment_dir: str
    submitted: list[str] = Field(description="Runs the sweep will train (pending ones; completed are skipped).")
    pid: int | None = Field(description="The background `tunelab run` process (None: nothing to run).")
    log: str | None = Field(description="Its output, relative to the root.")


class StatusOut(BaseModel):
    experiment_dir: str
    sweep_running: bool = Field(description="A sweep this server started is still running.")
    done: bool = Field(description="Nothing is queued or running: no active job and no background sweep.")
    runs: list[StatusRow]
    sweep_log_tail: list[str] = Field(default_factory=list, description="Last lines of the background sweep's log.")


class CancelOut(BaseModel):
    cancelled_jobs: list[str]


class EvalOut(BaseModel):
    evaluated: dict[str, list[str]] = Field(description="Run → the checkpoints evaluated now.")


class ResultRow(BaseModel):
    """One run as `results --json` prints it (keys stable); `eval` holds every checkpoint × task × metric."""

    name: str
    type: str
    model: str
    dataset: str
    factors: dict[str, Any]
    state: str
    final_loss: float | None
    final_val_loss: float | None
    steps: int | None
    duration_s: float | None
    tokens_per_s: float | None
    peak_memory_gib: float | None
    score: float | None
    score_ci: list[float] | None
    score_task: str | None
    score_metric: str | None
    scores: dict[str, float | None]
    eval: list[dict[str, Any]]
    run_dir: str
    error: str | None


class ResultsOut(BaseModel):
    runs: list[ResultRow]


class ReportOut(BaseModel):
    markdown: str
    html: str
    figures: list[str]
    partial: bool = Field(description="The sweep is not finished; the report says so.")
    resource: str = Field(description="The MCP resource URI of report.md.")


class HistoryOut(BaseModel):
    rows: list[dict[str, Any]] = Field(description="Every history row, as `history --json` prints them.")


class IngestRow(BaseModel):
    path: str
    imported: bool
    reason: str


class IngestOut(BaseModel):
    logs: list[IngestRow]


class AdoptOut(BaseModel):
    experiment_dir: str
    adopted: list[str]
    problems: list[str]


class PathList(BaseModel):
    """list_models / list_datasets: paths relative to the root where inside it."""

    paths: list[str]
