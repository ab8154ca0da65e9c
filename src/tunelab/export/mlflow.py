"""`tunelab export DIR --to mlflow`: one MLflow run per tunelab run, nested under one parent per sweep. Idempotent: runs
are found again by their tags and only what the tracker lacks is logged. MLflow is an optional extra."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tunelab.errors import TunelabError
from tunelab.export.records import TrackedRun, TrackedSweep, sweep_record
from tunelab.rundir.layout import RunState

TAG_DIR = "tunelab.experiment_dir"  # the resolved experiment directory: what makes a sweep the same sweep
TAG_RUN = "tunelab.run"  # the tunelab run name; "" on the sweep's parent run
TAG_ROLE = "tunelab.role"  # sweep | run
# tunelab's run state -> MLflow's RunStatus name
STATUS: dict[str, str] = {RunState.COMPLETED: "FINISHED", RunState.FAILED: "FAILED", RunState.INTERRUPTED: "KILLED",
                          RunState.RUNNING: "RUNNING", RunState.PENDING: "SCHEDULED"}
MLFLOW_ENDED = frozenset({"FINISHED", "FAILED", "KILLED"})  # MLflow's terminal RunStatus names
BATCH = 1000  # MLflow's log_batch limit on metrics (params: 100)
MISSING = "MLflow is not installed: pip install 'tunelab[mlflow]' (mlflow-skinny with SQLite support)"
STORE = Path("mlflow") / "mlflow.db"  # the default store, in the experiment directory (artifacts beside it)


@dataclass
class ExportResult:
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    created: list[str]  # tunelab run names given a new MLflow run
    updated: list[str]  # already exported: only new points and params logged
    points_logged: int


def _is_file_store(tracking_uri: str) -> bool:
    """file://… or a plain path: MLflow's file store (MLflow reads a bare 'databricks' as Databricks)."""
    scheme = urlparse(tracking_uri).scheme
    return scheme == "file" or (scheme == "" and tracking_uri != "databricks")


def _client_class():
    """MlflowClient, or an error naming the extra to install."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise TunelabError(MISSING, field="--to mlflow") from exc
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)  # "Creating initial MLflow database tables..."
    return MlflowClient


def _client(client_class, tracking_uri: str):
    """A client on the store, opened (and a SQLite file created with its directory) here."""
    from mlflow.exceptions import MlflowException

    try:
        return client_class(tracking_uri=tracking_uri)
    except ImportError as exc:  # the SQL store needs sqlalchemy + alembic
        raise TunelabError(f"{MISSING}: {exc}", field="--tracking-uri") from exc
    except MlflowException as exc:
        if not _is_file_store(tracking_uri):
            raise
        raise TunelabError(f"MLflow (3.10 on) refuses file stores such as {tracking_uri!r}: a SQLite store works, "
                           f"e.g. sqlite:///path/to/mlflow.db (the default: <experiment>/{STORE.as_posix()})",
                           field="--tracking-uri") from exc


def default_tracking_uri(experiment_dir: Path) -> str:
    """sqlite:///<experiment>/mlflow/mlflow.db: the sweep's tracking data kept (and archived) with the sweep."""
    return f"sqlite:///{Path(experiment_dir).resolve() / STORE}"


def _artifact_location(tracking_uri: str, name: str) -> str | None:
    """For a SQLite store, artifacts beside the database (MLflow's default is ./mlruns of the current dir)."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme != "sqlite":
        return None
    db = Path(tracking_uri[len("sqlite:///"):])
    return (db.parent.resolve() / "mlartifacts" / name).as_uri()


def _experiment_id(client, tracking_uri: str, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise TunelabError(f"MLflow experiment {name!r} is deleted in {tracking_uri}: restore it or pass "
                               "--mlflow-experiment", field="--mlflow-experiment")
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=_artifact_location(tracking_uri, name))


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _existing(client, experiment_id: str, exp_dir: Path) -> dict[str, Any]:
    """{tunelab run name ("" for the parent): MLflow run} of earlier exports of this sweep."""
    found: dict[str, Any] = {}
    token = None
    while True:
        page = client.search_runs([experiment_id], f"tags.`{TAG_DIR}` = {_quote(str(exp_dir))}",
                                  max_results=1000, page_token=token)
        for run in page:
            found.setdefault(run.data.tags.get(TAG_RUN, ""), run)
        token = page.token
        if not token:
            return found


def _log(client, run_id: str, params: dict[str, str], metrics: list, known_params: dict[str, str]) -> int:
    from mlflow.entities import Metric, Param

    new_params = [Param(k[:250], v[:6000]) for k, v in params.items() if k[:250] not in known_params]
    for i in range(0, len(new_params), 100):
        client.log_batch(run_id, params=new_params[i:i + 100])
    entities = [Metric(p.key, p.value, p.timestamp_ms, p.step) for p in metrics]
    for i in range(0, len(entities), BATCH):
        client.log_batch(run_id, metrics=entities[i:i + BATCH])
    return len(entities)


def _new_points(client, run_id: str, record: TrackedRun) -> list:
    """The record's points whose (key, step) the MLflow run does not hold yet."""
    have = {(m.key, m.step) for key in {p.key for p in record.metrics}
            for m in client.get_metric_history(run_id, key)}
    return [p for p in record.metrics if (p.key, p.step) not in have]


def _set_status(client, run_id: str, state: str, end_ms: int | None) -> None:
    status = STATUS.get(state, "SCHEDULED")
    if status in MLFLOW_ENDED:
        client.set_terminated(run_id, status=status, end_time=end_ms)
    else:
        client.update_run(run_id, status=status)


def _export_run(client, experiment_id: str, parent_id: str, sweep: TrackedSweep, record: TrackedRun,
                existing) -> tuple[bool, int]:
    tags = {TAG_DIR: str(sweep.experiment_dir), TAG_RUN: record.name, TAG_ROLE: "run",
            "mlflow.parentRunId": parent_id, "tunelab.kind": record.kind, "tunelab.state": record.state}
    if record.error:
        tags["tunelab.error"] = record.error[:5000]
    if existing is None:
        run_id = client.create_run(experiment_id, start_time=record.start_ms, tags=tags,
                                   run_name=record.name).info.run_id
        points, known = record.metrics, {}
    else:
        run_id = existing.info.run_id
        for k, v in tags.items():
            client.set_tag(run_id, k, v)
        points, known = _new_points(client, run_id, record), existing.data.params
    n = _log(client, run_id, record.params, points, known)
    for name in ("run.yaml", "summary.json"):
        if (record.run_dir / name).is_file():
            client.log_artifact(run_id, str(record.run_dir / name), artifact_path="tunelab")
    _set_status(client, run_id, record.state, record.end_ms)
    return existing is None, n


def export_mlflow(experiment_dir: str | Path, tracking_uri: str | None = None,
                  experiment_name: str | None = None) -> ExportResult:
    """Export (or update) every run of the experiment under one parent run of the sweep."""
    client_class = _client_class()
    sweep = sweep_record(experiment_dir)  # an experiment directory: only then is a default store created in it
    tracking_uri = tracking_uri or default_tracking_uri(sweep.experiment_dir)
    client = _client(client_class, tracking_uri)
    experiment_id = _experiment_id(client, tracking_uri, experiment_name or sweep.name)
    existing = _existing(client, experiment_id, sweep.experiment_dir)
    parent = existing.get("")
    if parent is None:
        start = min((r.start_ms for r in sweep.runs if r.start_ms), default=None)
        parent_id = client.create_run(experiment_id, start_time=start, run_name=sweep.name, tags={
            TAG_DIR: str(sweep.experiment_dir), TAG_RUN: "", TAG_ROLE: "sweep"}).info.run_id
    else:
        parent_id = parent.info.run_id
    created: list[str] = []
    updated: list[str] = []
    points = 0
    for record in sweep.runs:
        is_new, n = _export_run(client, experiment_id, parent_id, sweep, record, existing.get(record.name))
        (created if is_new else updated).append(record.name)
        points += n
    if sweep.report_dir is not None:
        client.log_artifacts(parent_id, str(sweep.report_dir), artifact_path="report")
    states = {r.state for r in sweep.runs}
    ended_badly = {RunState.FAILED, RunState.INTERRUPTED}
    done = states <= {RunState.COMPLETED} | ended_badly
    end = max((r.end_ms for r in sweep.runs if r.end_ms), default=None)
    _set_status(client, parent_id, (RunState.FAILED if states & ended_badly else RunState.COMPLETED)
                if done else RunState.RUNNING, end)
    return ExportResult(tracking_uri, experiment_id, parent_id, created, updated, points)
