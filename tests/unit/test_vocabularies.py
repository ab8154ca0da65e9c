"""One StrEnum per vocabulary (docs/architecture.md, Vocabularies), compared as members outside its owner:
run states (rundir/layout.py), job states (execute/job_states.py), failure verdicts (execute/failures.py),
status rows (execute/status.py), memory counters (rundir/memory.py), executor names (spec/resources.py).
Each enum's logic is checked against an expectation written by hand: Slurm's documented state list, the
retry policy's table, a status row built from real run files and jobs."""

from __future__ import annotations

import io
import json
import socket
import subprocess
from enum import StrEnum
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError
from rich.console import Console

from test_architecture import executor_name_comparisons  # the comparison finder (==, !=, in a literal set)
from tunelab.execute.executors import EXECUTORS
from tunelab.execute.failures import FailureKind
from tunelab.execute.job_states import JobState, is_active_state
from tunelab.execute.jobs import JobRow, RunJobs
from tunelab.execute.status import RowState, StatusRow, status_row
from tunelab.execute.watch import RunView, render
from tunelab.fsutil import atomic_write_json
from tunelab.rundir.config import RunConfig
from tunelab.rundir.layout import RunState
from tunelab.rundir.memory import MemoryKind
from tunelab.spec import ExecutorKind, ResourcesSpec

VOCABULARIES: tuple[type[StrEnum], ...] = (RunState, JobState, FailureKind, RowState, MemoryKind)
PACKAGE = Path(__import__("tunelab").__file__).parent


def literal_comparisons(path: Path) -> list[int]:
    """Lines of a module comparing a value with a vocabulary's string, except the vocabularies it owns."""
    owned = {m.value for enum in VOCABULARIES if enum.__module__ == _module(path) for m in enum}
    words = {m.value for enum in VOCABULARIES for m in enum} - owned
    return executor_name_comparisons(path.read_text(), words)


def _module(path: Path) -> str:
    return ".".join(("tunelab", *path.relative_to(PACKAGE).with_suffix("").parts))


def test_the_scan_flags_a_vocabulary_literal_outside_its_owner_only():
    code = 'a = row.state == "cancelled"\nb = job.state in ("PENDING", "X")\nc = {"oom": 1}\nd = f("failed")\n'
    assert executor_name_comparisons(code, {m.value for enum in VOCABULARIES for m in enum}) == [1, 2]
    failures = PACKAGE / "execute" / "failures.py"  # compares Slurm's words with its own verdict words around
    assert _module(failures) == FailureKind.__module__ and literal_comparisons(failures) == []


def test_no_state_or_verdict_literal_is_compared_outside_its_owner():
    found = {str(p.relative_to(PACKAGE)): lines for p in sorted(PACKAGE.rglob("*.py"))
             if (lines := literal_comparisons(p))}
    assert found == {}


# squeue(1), JOB STATE CODES: each code and whether Slurm's description is of a job that has not ended
# (queued, running, held to run again, finishing) — written from the man page, not from tunelab.
SLURM_STATES = {
    "BOOT_FAIL": False, "CANCELLED": False, "COMPLETED": False, "CONFIGURING": True, "COMPLETING": True,
    "DEADLINE": False, "FAILED": False, "NODE_FAIL": False, "OUT_OF_MEMORY": False, "PENDING": True,
    "PREEMPTED": False, "RUNNING": True, "RESV_DEL_HOLD": True, "REQUEUE_FED": True, "REQUEUE_HOLD": True,
    "REQUEUED": True, "RESIZING": True, "REVOKED": False, "SIGNALING": True,
    "SPECIAL_EXIT": False,  # held after a special exit until a person releases it: it will not run by itself
    "STAGE_OUT": True, "STOPPED": True, "SUSPENDED": True, "TIMEOUT": False,
}
# of the active ones, those waiting for (another) start rather than holding their allocation
SLURM_QUEUED = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}


def test_job_states_are_slurms_documented_codes_plus_tunelabs_two():
    assert {s.value for s in JobState} == set(SLURM_STATES) | {"SUBMITTED", "UNSEEN"}
    assert {s.value for s in JobState if s.active} == {s for s, active in SLURM_STATES.items() if active} | {
        "SUBMITTED"}
    assert {s.value for s in JobState if s.queued} == SLURM_QUEUED | {"SUBMITTED"}
    assert not JobState.UNSEEN.active  # the scheduler forgot it: ended


@pytest.mark.parametrize(("said", "state", "active"), [
    ("CANCELLED by 1000", JobState.CANCELLED, False), ("CANCELLED+", JobState.CANCELLED, False),
    ("running", JobState.RUNNING, True), ("REQUEUE_HOLD", JobState.REQUEUE_HOLD, True),
    ("LAUNCH_FAILED", None, False), ("", None, False), (None, None, False)])
def test_a_schedulers_words_read_as_a_job_state(said, state, active):
    assert JobState.of(said) is state and is_active_state(said) is active


def test_the_retry_policy_retries_exactly_the_transient_verdicts():
    # README, reliability: OOM halves the micro-batch, TIMEOUT/PREEMPTED resume, a failed node is tried again;
    # a cancel is a person's decision and a plain failure (a bug, a missing file) would fail again
    assert {k.value for k in FailureKind if k.retryable} == {"oom", "timeout", "preempted", "node_fail"}


def test_row_states_keep_the_strings_run_states_and_verdicts_are_stored_as():
    assert {s.value for s in RowState} == {s.value for s in RunState} | {k.value for k in FailureKind}
    assert [s.label for s in RowState] == ["pending", "running", "completed", "interrupted", "FAILED", "OOM",
                                           "TIMEOUT", "PREEMPTED", "NODE_FAIL", "CANCELLED"]
    assert {s for s in RowState if s.ended_badly} == set(RowState) - {RowState.PENDING, RowState.RUNNING,
                                                                       RowState.COMPLETED}


def _cfg(tmp_path: Path) -> RunConfig:
    return RunConfig(name="r4", kind="finetune", experiment="e", experiment_dir=str(tmp_path),
                     model={"name": "m", "path": str(tmp_path / "m")}, dataset={"name": "d", "path": "d.json"},
                     prompt="{input}", training={"lora_rank": 4})


def _job(state: str, failure: FailureKind | None = None, kind: str = "train") -> JobRow:
    at = "2026-01-01T00:00:00+00:00"
    return JobRow(1, "r4", kind, "17", 1, "slurm", at, state, at, failure=failure, detail="why" if failure else None)


def _files(cfg: RunConfig, state: str, summary: bool = False) -> None:
    """status.json as a process of this host wrote it, one that has exited since."""
    ended = subprocess.Popen(["true"])
    ended.wait()
    atomic_write_json(cfg.run_dir / "status.json", {"run": cfg.name, "state": state, "pid": ended.pid,
                                                    "host": socket.gethostname()})
    if summary:
        atomic_write_json(cfg.run_dir / "summary.json", {"run": cfg.name, "state": state, "steps": 1})


@pytest.mark.parametrize(("files", "job", "state", "shown", "active"), [
    (None, None, RowState.PENDING, "pending", False),
    (None, ("SUBMITTED", None), RowState.PENDING, "pending", True),
    (None, ("REQUEUE_HOLD", None), RowState.PENDING, "pending (requeue_hold)", True),
    ("running", ("SUSPENDED", None), RowState.RUNNING, "running (suspended)", True),
    ("running", ("RUNNING", None), RowState.RUNNING, "running", True),
    ("failed", ("FAILED", FailureKind.OOM), RowState.OOM, "OOM", False),
    ("interrupted", ("CANCELLED by 0", FailureKind.CANCELLED), RowState.CANCELLED, "CANCELLED", False),
    ("completed", ("FAILED", FailureKind.COMPLETED), RowState.COMPLETED, "completed", False),
    ("failed", None, RowState.FAILED, "FAILED", False),
    ("running", None, RowState.INTERRUPTED, "interrupted", False),  # its writer has exited
])
def test_a_status_row_is_one_state_from_its_files_and_its_newest_job(tmp_path, files, job, state, shown, active):
    cfg = _cfg(tmp_path)
    cfg.run_dir.mkdir(parents=True)
    if files:
        _files(cfg, files, summary=files == "completed")
    row = status_row(cfg, RunJobs(train=_job(*job)) if job else None)
    assert (row.state, row.shown, row.active) == (state, shown, active)
    assert json.loads(json.dumps(row.to_json()))["state"] == state.value  # --json: the value, one vocabulary


def test_the_status_json_schema_names_the_row_states():
    schema = TypeAdapter(list[StatusRow]).json_schema()
    assert set(schema["$defs"]["RowState"]["enum"]) == {s.value for s in RowState}


def test_watch_counts_and_colours_every_verdict_as_failed():
    """Verdicts used to reach the watch view in capitals and its failure list in lower case: an OOM run counted
    as neither completed nor failed."""
    views = [RunView(n, "fine-tuned", s, s.label, None, None, None, None, None, "", "")
             for n, s in (("a", RowState.OOM), ("b", RowState.COMPLETED), ("c", RowState.CANCELLED),
                          ("d", RowState.RUNNING))]
    out = io.StringIO()
    Console(file=out, width=200).print(render("exp", views, None))
    assert "1/4 completed, 2 failed" in out.getvalue()
    table = render("exp", views, None).renderables[0]
    cells = table.columns[1]._cells  # the state column: Text with its style
    assert [(c.plain, c.style) for c in cells] == [("OOM", "red"), ("completed", "green"), ("CANCELLED", "red"),
                                                    ("running", "")]


def test_a_spec_names_only_a_registered_executor():
    assert {k.value for k in ExecutorKind} == set(EXECUTORS)
    assert all(EXECUTORS[k].name == k for k in ExecutorKind)
    assert ResourcesSpec(executor="slurm").executor is ExecutorKind.SLURM
    with pytest.raises(ValidationError, match="'local' or 'slurm'"):
        ResourcesSpec(executor="pbs")
