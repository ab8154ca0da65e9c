"""One StrEnum per vocabulary (docs/architecture.md, Vocabularies), compared as members outside its owner:
run states (rundir/layout.py), job states (execute/job_states.py), failure verdicts (execute/failures.py),
status rows and evaluation states (execute/status.py), memory counters (rundir/memory.py), executor names
and distributed strategies (spec/resources.py), job and group kinds (execute/executor.py).
Each enum's logic is checked against an expectation written by hand: Slurm's documented state list, the
retry policy's table, a status row built from real run files and jobs."""

from __future__ import annotations

import ast
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

from tunelab.cli import app
from tunelab.execute.executor import GroupKind, JobKind
from tunelab.execute.executors import EXECUTORS
from tunelab.execute.failures import FailureKind
from tunelab.execute.job_states import JobState, is_active_state
from tunelab.execute.jobs import JobRow, RunJobs, all_jobs, latest_jobs
from tunelab.execute.local_jobs import LocalExecutor
from tunelab.execute.slurm_jobs import sbatch_options, write_side_job_script
from tunelab.execute.status import EvalState, RowState, StatusRow, eval_failed, eval_label, status_row
from tunelab.execute.watch import RunView, render
from tunelab.fsutil import atomic_write_json
from tunelab.ledger import store as ledger
from tunelab.rundir.config import RunConfig
from tunelab.rundir.experiment import task_names
from tunelab.rundir.layout import RunState
from tunelab.rundir.memory import MemoryKind
from tunelab.spec import ExecutorKind, ResourcesSpec, Strategy

VOCABULARIES: tuple[type[StrEnum], ...] = (RunState, JobState, FailureKind, RowState, EvalState, MemoryKind, Strategy)
# Vocabularies whose words are other things' words too (a split is "train", `slurm.pack` may be "node"): a
# comparison with one of their words counts where the other side is named `kind` (kind, job.kind, group.kind).
KINDS: tuple[type[StrEnum], ...] = (JobKind, GroupKind)
PACKAGE = Path(__import__("tunelab").__file__).parent


def literal_comparisons(path: Path) -> list[int]:
    """Lines of a module comparing a value with a vocabulary's string, except the vocabularies it owns."""
    owned = {m.value for enum in VOCABULARIES if enum.__module__ == _module(path) for m in enum}
    words = {m.value for enum in VOCABULARIES for m in enum} - owned
    kinds = {m.value for enum in KINDS if enum.__module__ != _module(path) for m in enum}
    source = path.read_text()
    return sorted(set(executor_name_comparisons(source, words)) | set(kind_comparisons(source, kinds)))


def kind_comparisons(source: str, words: set[str]) -> list[int]:
    """Lines comparing something named `kind` (a name or an attribute) with one of `words` (==, !=, in a
    literal tuple/list/set)."""
    def is_kind(node: ast.expr) -> bool:
        return (isinstance(node, ast.Name) and node.id == "kind") or (
            isinstance(node, ast.Attribute) and node.attr == "kind")

    def constants(node: ast.expr) -> set[object]:
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return {c for e in node.elts for c in constants(e)}
        return {node.value} if isinstance(node, ast.Constant) else set()

    return sorted(node.lineno for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Compare)
                  and any(is_kind(side) for side in (node.left, *node.comparators))
                  and any(constants(side) & words for side in (node.left, *node.comparators)))


def _module(path: Path) -> str:
    return ".".join(("tunelab", *path.relative_to(PACKAGE).with_suffix("").parts))


def test_the_scan_flags_a_vocabulary_literal_outside_its_owner_only():
    code = 'a = row.state == "cancelled"\nb = job.state in ("PENDING", "X")\nc = {"oom": 1}\nd = f("failed")\n'
    assert executor_name_comparisons(code, {m.value for enum in VOCABULARIES for m in enum}) == [1, 2]
    failures = PACKAGE / "execute" / "failures.py"  # compares Slurm's words with its own verdict words around
    assert _module(failures) == FailureKind.__module__ and literal_comparisons(failures) == []


def test_the_kind_scan_flags_a_job_or_group_kind_and_not_a_split_or_pack_of_the_same_word():
    code = ('a = job.kind == "train"\nb = cut.split in ("train", "x")\nc = "node" != group.kind\n'
            'd = settings.pack == "node"\ne = kind in ("eval", "probe")\nf = cfg.kind == "finetune"\n')
    assert kind_comparisons(code, {m.value for enum in KINDS for m in enum}) == [1, 3, 5]


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


def _job(state: str, failure: FailureKind | None = None, kind: JobKind = JobKind.TRAIN) -> JobRow:
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


def _scored(cfg: RunConfig) -> None:
    """Every task of the run scored on one checkpoint: eval/epoch_1/<task>/scores.json."""
    for task in task_names(cfg) or ["exact_match"]:
        atomic_write_json(cfg.run_dir / "eval" / "epoch_1" / task / "scores.json", {"task": task})


@pytest.mark.parametrize(("scored", "job", "state", "label"), [
    (False, None, None, "—"),
    (True, None, EvalState.SCORED, "scored"),  # evaluated by hand: no job of ours
    (True, ("FAILED", FailureKind.FAILED), EvalState.SCORED, "scored"),  # every task's scores.json: they win
    (False, ("SUBMITTED", None), EvalState.PENDING, "pending"),
    (False, ("REQUEUE_HOLD", None), EvalState.PENDING, "pending"),
    (False, ("COMPLETING", None), EvalState.RUNNING, "running"),
    (False, ("COMPLETED", None), EvalState.ENDED, "ended"),  # ended, its verdict waits for the accounting
    (False, ("OUT_OF_MEMORY", FailureKind.OOM), FailureKind.OOM, "OOM"),  # the verdict itself
    (False, ("CANCELLED by 0", FailureKind.CANCELLED), FailureKind.CANCELLED, "CANCELLED"),
    (False, ("COMPLETED", FailureKind.COMPLETED), FailureKind.COMPLETED, "completed"),  # exit 0, not all scored
])
def test_a_status_rows_eval_is_scored_or_where_its_evaluation_job_stands(tmp_path, scored, job, state, label):
    cfg = _cfg(tmp_path)
    cfg.run_dir.mkdir(parents=True)
    if scored:
        _scored(cfg)
    row = status_row(cfg, RunJobs(eval=_job(*job, kind=JobKind.EVAL)) if job else None)
    assert row.eval is state
    assert (eval_label(row.eval) or "—") == label  # the table's cell (cli status, --watch)
    assert eval_failed(row.eval) is (label.isupper())  # red in --watch
    assert json.loads(json.dumps(row.to_json()))["eval"] == (state.value if state else None)  # --json: the value


def test_the_status_json_schema_names_the_row_and_eval_states():
    schema = TypeAdapter(list[StatusRow]).json_schema()
    assert set(schema["$defs"]["RowState"]["enum"]) == {s.value for s in RowState}
    # scored, where an evaluation job stands before its verdict, or the verdict (failures.py)
    refs = {ref["$ref"].split("/")[-1] for ref in schema["$defs"]["StatusRow"]["properties"]["eval"]["anyOf"]
            if "$ref" in ref}
    assert refs == {"EvalState", "FailureKind"}
    assert {w for name in refs for w in schema["$defs"][name]["enum"]} == {
        "scored", "pending", "running", "ended", "completed", "oom", "timeout", "preempted", "node_fail",
        "cancelled", "failed"}


def test_job_kinds_go_to_the_ledger_as_their_words_and_come_back_as_members(tmp_path):
    at = "2026-01-01T00:00:00+00:00"
    for kind, job_id in ((JobKind.TRAIN, "17"), (JobKind.EVAL, "18")):
        ledger.record_job(tmp_path, run="r4", kind=kind, job_id=job_id, attempt=1, executor="slurm",
                          submitted_at=at, state=JobState.PENDING)
    assert [row["kind"] for row in ledger.query(tmp_path, "SELECT kind FROM jobs ORDER BY id")] == ["train", "eval"]
    assert [j.kind for j in all_jobs(tmp_path)] == [JobKind.TRAIN, JobKind.EVAL]
    assert all(type(j.kind) is JobKind for j in all_jobs(tmp_path))
    jobs = latest_jobs(tmp_path)["r4"]
    assert (jobs.train and jobs.train.job_id, jobs.eval and jobs.eval.job_id) == ("17", "18")


def test_a_job_kind_names_its_files_by_its_word(tmp_path):
    """The scheduler writes slurm-<kind>-<id>.out (sbatch --output) and the executor reads that file back: a
    member must format as its word there, never as 'JobKind.EVAL'."""
    cfg = _cfg(tmp_path)
    assert f"--output={cfg.run_dir}/slurm-eval-%j.out" in sbatch_options(cfg, JobKind.EVAL)
    assert "--requeue" in sbatch_options(cfg, JobKind.TRAIN) and "--requeue" not in sbatch_options(cfg, JobKind.EVAL)
    probe = write_side_job_script(cfg, JobKind.PROBE, tmp_path, "true", "0:10:00")
    assert probe == tmp_path / "probe.sbatch" and f"--output={tmp_path}/slurm-probe-%j.out" in probe.read_text()
    local = LocalExecutor()
    assert local.log(tmp_path, JobKind.TRAIN, "") == tmp_path / "train.log"
    assert local.log(tmp_path, JobKind.EVAL, "") == tmp_path / "eval.log"


def test_the_ledger_reads_a_runs_state_back_as_a_run_state(tmp_path):
    cfg = _cfg(tmp_path)
    cfg.run_dir.mkdir(parents=True)
    _files(cfg, "failed")
    ledger.ingest_all(tmp_path, [cfg])
    (row,) = ledger.read_runs(tmp_path)
    assert row.state is RunState.FAILED
    assert ledger.query(tmp_path, "SELECT state FROM runs") == [{"state": "failed"}]  # stored as the word


def test_an_unknown_executor_name_is_one_error_line_naming_the_choices(tmp_path):
    from typer.testing import CliRunner

    for command in ("probe", "demo"):
        args = [command, str(tmp_path / "experiment.yaml")] if command == "probe" else [command]
        res = CliRunner().invoke(app, [*args, "--executor", "pbs"])
        assert res.exit_code == 1, res.output
        assert "unknown executor 'pbs': use 'local' or 'slurm' or 'ray'" in res.output
        assert "[local|slurm|ray]" in CliRunner().invoke(app, [command, "--help"]).output


def test_watch_counts_and_colours_every_verdict_as_failed():
    """Verdicts used to reach the watch view in capitals and its failure list in lower case: an OOM run counted
    as neither completed nor failed."""
    views = [RunView(n, "fine-tuned", s, s.label, None, None, None, None, None, e, "")
             for n, s, e in (("a", RowState.OOM, None), ("b", RowState.COMPLETED, FailureKind.OOM),
                             ("c", RowState.CANCELLED, None), ("d", RowState.RUNNING, EvalState.SCORED))]
    out = io.StringIO()
    Console(file=out, width=200).print(render("exp", views, None))
    assert "1/4 completed, 2 failed" in out.getvalue()
    table = render("exp", views, None).renderables[0]
    cells = table.columns[1]._cells  # the state column: Text with its style
    assert [(c.plain, c.style) for c in cells] == [("OOM", "red"), ("completed", "green"), ("CANCELLED", "red"),
                                                    ("running", "")]
    evals = table.columns[7]._cells  # the eval column: its label, a failed evaluation in red
    assert [(c.plain, c.style) for c in evals] == [("", ""), ("OOM", "red"), ("", ""), ("scored", "")]


def test_a_spec_names_only_a_registered_executor():
    assert {k.value for k in ExecutorKind} == set(EXECUTORS)
    assert all(EXECUTORS[k].name == k for k in ExecutorKind)
    assert ResourcesSpec(executor="slurm").executor is ExecutorKind.SLURM
    with pytest.raises(ValidationError, match="'local', 'slurm' or 'ray'"):
        ResourcesSpec(executor="pbs")
