"""Status and history name the node a job ran on, whatever the executor (a Ray job's node is its address): the status
row carries its newest job's node, each attempt the ledger records names its node, and a ledger from before that
column gains it without losing its rows. The real cluster's: tests/e2e/ray/."""

from __future__ import annotations

import sqlite3

from tunelab.execute.attempts import all_attempts
from tunelab.execute.executor import JobKind
from tunelab.execute.failures import FailureKind
from tunelab.execute.jobs import JobRow, RunJobs
from tunelab.execute.status import status_row
from tunelab.ledger import store as ledger
from tunelab.rundir.config import RunConfig
from tunelab.spec import ResourcesSpec


def _run(tmp_path) -> RunConfig:
    return RunConfig.model_validate({
        "name": "r", "experiment": "e", "experiment_dir": str(tmp_path), "kind": "finetune",
        "model": {"name": "m", "path": str(tmp_path)}, "dataset": {"name": "d", "path": str(tmp_path / "d.json")},
        "prompt": "{input}", "resources": ResourcesSpec(executor="ray").model_dump()})


def _job(node: str | None) -> JobRow:
    return JobRow(id=1, run="r", kind=JobKind.TRAIN, job_id="tl-train-1@http://10.78.0.11:28265", attempt=1,
                  executor="ray", submitted_at="2026-01-01T00:00:00+00:00", state="RUNNING",
                  updated_at="2026-01-01T00:00:01+00:00", node=node)


def test_a_status_row_names_the_node_its_newest_job_runs_on(tmp_path):
    row = status_row(_run(tmp_path), RunJobs(train=_job("10.78.0.12")))
    assert (row.executor, row.node, row.job_state) == ("ray", "10.78.0.12", "RUNNING")
    assert status_row(_run(tmp_path), RunJobs(train=_job(None))).node == ""  # not placed yet
    assert status_row(_run(tmp_path)).node == ""  # never submitted


def test_each_attempt_names_its_executor_and_node(tmp_path):
    for i, node in enumerate(("10.78.0.12", "10.78.0.11")):
        ledger.record_attempt(tmp_path, run="r", attempt=1, executor="ray", job_id=f"j{i}", started_at=None,
                              finished_at=None, exit_code=None, state=FailureKind.FAILED if i == 0 else
                              FailureKind.COMPLETED, reason="", node=node)
    rows = all_attempts(tmp_path)
    assert [(a.executor, a.node, a.state) for a in rows] == [("ray", "10.78.0.12", FailureKind.FAILED),
                                                              ("ray", "10.78.0.11", FailureKind.COMPLETED)]


def test_a_ledger_from_before_the_node_column_gains_it_and_keeps_its_rows(tmp_path):
    with sqlite3.connect(ledger.ledger_path(tmp_path)) as conn:
        conn.execute("CREATE TABLE attempts (id INTEGER PRIMARY KEY AUTOINCREMENT, run TEXT NOT NULL, attempt INTEGER, "
                     "executor TEXT, job_id TEXT, started_at TEXT, finished_at TEXT, exit_code INTEGER, state TEXT, "
                     "reason TEXT)")
        conn.execute("INSERT INTO attempts (run, attempt, executor, job_id, state) VALUES ('r', 1, 'slurm', '7', "
                     "'node_fail')")
    ledger.record_attempt(tmp_path, run="r", attempt=2, executor="ray", job_id="j", started_at=None, finished_at=None,
                          exit_code=0, state=FailureKind.COMPLETED, reason="", node="10.78.0.11")
    assert [(a.job_id, a.node) for a in all_attempts(tmp_path)] == [("7", None), ("j", "10.78.0.11")]
