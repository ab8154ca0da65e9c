"""A job's dispatch — its submission to its process's creation, which every job an executor starts pays once: a Ray
job's supervisor, a Slurm scheduling pass — recorded and priced. The training job knows when its process was created
(summary.json process_started_at, the clock its start-up counts from); ingest records it against the experiment
ledger's submission in the history row with the executor and the node; the plan adds the median of the same
executor's rows (else an assumed figure) to each training job's and each detached evaluation job's start, and the
re-plan to each job not started yet. Every figure below is worked out by hand."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from datetime import datetime
from pathlib import Path

import pytest

from tunelab.execute import executors
from tunelab.execute.executor import ClusterFacts, ClusterRead, NodeFacts
from tunelab.forecast import sweeptime
from tunelab.forecast.evalrun import predict_run_eval
from tunelab.forecast.gpus import NodeSize
from tunelab.forecast.interval import PRIOR_SIGMA
from tunelab.forecast.jobstart import RAY_DISPATCH_S, SLURM_DISPATCH_S, JobStart, job_dispatch, with_dispatch
from tunelab.forecast.remaining import Phase, sweep_remaining
from tunelab.ledger import history, store
from tunelab.ledger.generation import GenerationOrigin, GenerationRow
from tunelab.ledger.history import HistoryRun
from tunelab.ledger.submission import TrainingJob, training_job
from tunelab.rundir.config import RunConfig, save_run_config
from tunelab.rundir.estimate import RunEstimate, SourceKind, TimeRange
from tunelab.rundir.experiment import load_runs
from tunelab.rundir.status import write_status
from tunelab.rundir.summary import ProcessMemory, Summary, write_summary
from tunelab.spec import load_spec
from tunelab.train.metrics import process_started_at

MODEL = "qwen2.5-0.5b"  # a catalog model: its architecture is known without a directory
ROWS = {"test": tuple((30, 25) for _ in range(10))}  # 10 test rows: 30 tokens, the answer from token 25
PROBE = GenerationRow(key=f"probe:{MODEL}", origin=GenerationOrigin.PROBED, model_path=MODEL, device="cpu",
                      prefill_tokens_per_s=1000.0, decode_fixed_s=0.01, decode_row_s=0.002,
                      recorded_at="2026-01-01T00:00:00")
Z90 = 1.2816  # the P90's z, written by hand


@pytest.fixture(autouse=True)
def fresh_history(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))


def _row(key: str, executor: str, dispatch_s: float | None) -> HistoryRun:
    """A trained run's row (a speed measured, as every one has: the planner reads only those), on `executor`."""
    return HistoryRun(key=key, source="tunelab", origin="measured", executor=executor, dispatch_s=dispatch_s,
                      tokens_per_s=100.0)


# --------------------------------------------------------------------------- recorded
def test_a_process_says_when_it_was_created_to_the_tick():
    """A child forked between two readings of the clock says it was created between them (to the 10 ms tick):
    /proc/stat's btime, whole seconds, put it up to a second off."""
    read, write = os.pipe()
    before = time.time()
    pid = os.fork()
    if pid == 0:  # the child: its own creation, then gone
        os.write(write, (process_started_at() or "").encode())
        os._exit(0)
    after = time.time()
    os.close(write)
    said = os.read(read, 100).decode()
    os.waitpid(pid, 0)
    created = datetime.fromisoformat(said).timestamp()
    assert before - 0.02 <= created <= after + 0.02


def _finished(exp: Path, summary: Summary, executor: str = "ray") -> RunConfig:
    """A fine-tuned run of `exp` that completed on `executor`: run.yaml, status.json and summary.json."""
    data = exp / "d.json"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text(json.dumps({s: [{"input": "a", "output": "A"}] for s in ("train", "validation", "test")}))
    cfg = RunConfig(name="r", kind="finetune", experiment="e", experiment_dir=str(exp), attempt=1,
                    model={"name": "tiny", "path": str(exp / "model")}, dataset={"name": "d", "path": str(data)},
                    prompt="{input}", training={"lora_rank": 4}, resources={"executor": executor})
    save_run_config(cfg)
    write_status(cfg.run_dir, run="r", state="completed", first_started_at="2026-11-27T10:00:03+00:00")
    write_summary(cfg.run_dir, summary)
    return cfg


def _job(exp: Path, kind: str, job_id: str, submitted_at: str, attempt: int = 1) -> int:
    return store.record_job(exp, run="r", kind=kind, job_id=job_id, attempt=attempt, executor="ray",
                            submitted_at=submitted_at, state="SUCCEEDED")


def test_ingest_records_the_executor_the_node_and_the_dispatch_of_the_completed_attempts_training_job(tmp_path):
    exp = tmp_path / "exp"
    rank0 = ProcessMemory(rank=0, frozen_param_bytes=1, trainable_param_bytes=1, optimizer_bytes=1,
                          peak_rss_bytes=1, node="10.0.0.2")
    _finished(exp, Summary(run="r", state="completed", attempt=1, steps=10, tokens=1000, tokens_per_s=50.0,
                           processes=[rank0], process_started_at="2026-11-27T10:00:02.750+00:00"))
    _job(exp, "train", "first@h", "2026-11-27T08:00:00.000+00:00", attempt=0)  # an earlier attempt's
    _job(exp, "train", "second@h", "2026-11-27T09:00:00.000+00:00")  # this attempt's, submitted again later
    _job(exp, "train", "third@h", "2026-11-27T10:00:00.000+00:00")
    _job(exp, "eval", "gate@h", "2026-11-27T10:00:02.500+00:00")  # its evaluation's: not the training's
    store.ingest_all(exp, load_runs(exp))
    [row] = history.load(everything=True)
    # 10:00:00.000 (the latest training job of attempt 1) to 10:00:02.750; rank 0's node
    assert (row.executor, row.node, row.dispatch_s) == ("ray", "10.0.0.2", 2.75)


def test_the_node_falls_back_to_the_jobs_and_a_dispatch_is_none_or_clamped_where_it_cannot_be_told(tmp_path):
    cfg = _finished(tmp_path / "exp", Summary(run="r", steps=10), executor="slurm")
    job = TrainingJob("2026-11-27T10:00:00.000+00:00", node="node07")

    def row(started: str | None, job: TrainingJob | None) -> HistoryRun:
        return history.from_run_dir(cfg, Summary(steps=10, process_started_at=started), job=job)

    late = row("2026-11-27T10:00:01.250+00:00", job)
    assert (late.executor, late.node, late.dispatch_s) == ("slurm", "node07", 1.25)  # no processes: the job's node
    rank0 = ProcessMemory(rank=0, frozen_param_bytes=1, trainable_param_bytes=1, optimizer_bytes=1,
                          peak_rss_bytes=1, node="vm")  # a one-node job's rank 0 names its hostname only
    named = history.from_run_dir(cfg, Summary(steps=10, processes=[rank0]), job=job)
    assert (named.node, history.from_run_dir(cfg, Summary(steps=10, processes=[rank0])).node) == ("node07", "vm")
    assert row("2026-11-27T09:59:59.900+00:00", job).dispatch_s == 0.0  # the node's clock 0.1 s behind: clamped
    assert row(None, job).dispatch_s is None  # a summary from before process_started_at
    assert (row("2026-11-27T10:00:01.250+00:00", None).dispatch_s, row(None, None).node) == (None, None)
    requeued = TrainingJob("2026-11-27T10:00:00.000+00:00", not_its_own=True)  # started again under its id
    assert row("2026-11-27T11:00:00.000+00:00", requeued).dispatch_s is None


def test_a_requeued_or_shared_job_in_the_ledger_is_not_its_own_start(tmp_path):
    exp = tmp_path / "exp"
    _finished(exp, Summary(run="r", attempt=1, steps=10))
    _job(exp, "train", "12@slurm", "2026-11-27T10:00:00.000+00:00")
    with store.connect(exp) as conn:
        assert training_job(conn, "r", 1) == TrainingJob("2026-11-27T10:00:00.000+00:00")
        assert training_job(conn, "r", 2) is None  # no job of that attempt
    store.record_attempt(exp, run="r", attempt=1, executor="slurm", job_id="12@slurm", started_at=None,
                         finished_at=None, exit_code=None, state="preempted", reason="requeued")
    with store.connect(exp) as conn:
        assert training_job(conn, "r", 1).not_its_own  # type: ignore[union-attr]
    store.record_job(exp, run="other", kind="train", job_id="13@slurm", attempt=1, executor="slurm",
                     submitted_at="2026-11-27T10:00:00.000+00:00", state="RUNNING")
    _job(exp, "train", "13@slurm", "2026-11-27T10:00:00.000+00:00")  # a node job two runs share
    with store.connect(exp) as conn:
        assert training_job(conn, "r", 1).not_its_own  # type: ignore[union-attr]


def test_an_older_history_file_gains_the_columns(tmp_path):
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE history (key TEXT PRIMARY KEY, source TEXT NOT NULL, tokens_per_s REAL, "
                     "recorded_at TEXT)")
        conn.execute("INSERT INTO history VALUES ('old', 'tunelab', 50.0, '2026-01-01')")
    [old] = history.load(db, everything=True)
    assert (old.executor, old.node, old.dispatch_s) == (None, None, None)
    history.record([HistoryRun(key="new", source="tunelab", executor="ray", node="10.0.0.2", dispatch_s=2.4)], db)
    new = next(r for r in history.load(db, everything=True) if r.key == "new")
    assert (new.executor, new.node, new.dispatch_s) == ("ray", "10.0.0.2", 2.4)


# --------------------------------------------------------------------------- priced
def test_the_dispatch_is_the_median_of_the_same_executors_jobs_else_assumed():
    rows = [_row("a", "ray", 2.0), _row("b", "ray", 3.5), _row("c", "ray", 2.25), _row("d", "ray", 2.75),
            _row("s", "slurm", 40.0), _row("x", "ray", None)]
    ray = job_dispatch("ray", rows)
    assert (ray.seconds, ray.kind) == (2.5, SourceKind.MEASURED)  # (2.25 + 2.75) / 2; Slurm's row not counted
    assert ray.words == " + 2.5 s ray job dispatch (history median of 4 jobs)"
    slurm = job_dispatch("slurm", rows[:4])  # no Slurm row: assumed
    assert (slurm.seconds, slurm.kind, slurm.source) == (SLURM_DISPATCH_S, SourceKind.ASSUMED, "assumed")
    assert job_dispatch("ray", []).seconds == RAY_DISPATCH_S
    local = job_dispatch("local", [])
    assert (local.seconds, local.words, local.range()) == (0.0, "", None)
    start = JobStart(12.0, "history", SourceKind.MEASURED)
    assert with_dispatch(start, local) is start  # a local plan's start as it was


def test_a_start_after_its_dispatch_adds_its_seconds_its_words_and_its_width():
    start = JobStart(12.0, "history", SourceKind.MEASURED)
    after = with_dispatch(start, job_dispatch("ray", []))
    assert (after.seconds, after.source) == (14.5, "history + 2.5 s ray job dispatch (assumed)")
    # each part's distance from its P50 at its kind's width, added in quadrature (forecast/combine.py)
    own, dispatch = 12.0 * math.exp(Z90 * PRIOR_SIGMA[SourceKind.MEASURED]), 2.5 * math.exp(
        Z90 * PRIOR_SIGMA[SourceKind.ASSUMED])
    got = after.range()
    assert got.p50_s == pytest.approx(14.5, abs=0.1)
    assert got.p90_s == pytest.approx(14.5 + math.hypot(own - 12.0, dispatch - 2.5), abs=0.15)


def _cfg(exp: Path, name: str, resources: dict, kind: str = "finetune", estimate: RunEstimate | None = None
         ) -> RunConfig:
    return RunConfig(name=name, kind=kind, experiment="e", experiment_dir=str(exp),  # type: ignore[arg-type]
                     model={"name": "q", "path": MODEL}, dataset={"name": "d", "path": str(exp)},
                     training={"epochs": 1} if kind == "finetune" else None, eval={"max_tokens": 8},
                     resources=resources, estimate=estimate)


def _estimate(name: str) -> RunEstimate:
    """Training 100 s, its measured 10 s start-up inside."""
    return RunEstimate(run=name, steps=10, seconds=100.0, startup_s=10.0, startup_kind="measured",
                       time_kind="measured", time_range=TimeRange(p10_s=90.0, p50_s=100.0, p90_s=110.0))


def _forecast(write_spec, resources: dict, past: list[HistoryRun]):
    """Two fine-tuned runs and a control of one model on `resources` (one lane), planned with history `past`."""
    path = write_spec(resources=resources)
    spec, exp = load_spec(path), path.parent
    runs = [_cfg(exp, "a", resources), _cfg(exp, "b", resources), _cfg(exp, "base", resources, kind="control")]
    plan = sweeptime.Sweep(spec, runs, {c.name: _estimate(c.name) for c in runs[:2]}, None,
                           NodeSize.of(spec.resources), history=past, generation=[PROBE], errors=[])
    return runs, sweeptime.sweep_forecast(plan, lambda c: ROWS)


@pytest.mark.parametrize("executor,assumed,jobs", [("slurm", SLURM_DISPATCH_S, 5), ("ray", RAY_DISPATCH_S, 3)])
def test_every_job_of_a_detached_executor_pays_its_dispatch_in_the_plan(write_spec, monkeypatch, executor, assumed,
                                                                      jobs):
    """One lane (Slurm: one array task at a time; Ray: a one-CPU node), so the makespan is the runs' sum, each job
    after its dispatch. Slurm: 5 jobs — each fine-tuned run's training and evaluation, the control's evaluation;
    Ray: 3 — each fine-tuned run's one job (its training, then its evaluation: one node, no GPU), the control's."""
    one_cpu = ClusterFacts((NodeFacts("10.0.0.1", 1, 0, 8.0),), "Ray cluster http://head:8265")
    monkeypatch.setattr(executors, "cluster_facts",
                        lambda res: ClusterRead(one_cpu, address="http://head:8265") if executor == "ray" else None)
    resources = {"executor": executor, "gpus_per_run": 0, **(
        {"slurm": {"array_max_running": 1}} if executor == "slurm" else {"address": "http://head:8265"})}
    free = [_row("z", executor, 0.0)]  # jobs here measured to start at once: no dispatch
    measured = [_row("1", executor, 1.0), _row("3", executor, 3.0), _row("4", executor, 4.0),
                _row("other", "local" if executor == "ray" else "ray", 100.0)]
    runs, none = _forecast(write_spec, resources, free)
    _, assumed_plan = _forecast(write_spec, resources, [])
    _, median_plan = _forecast(write_spec, resources, measured)
    assert len(none.devices) == 1 and none.makespan_s is not None
    assert assumed_plan.makespan_s == pytest.approx(none.makespan_s + jobs * assumed, abs=0.2)
    assert median_plan.makespan_s == pytest.approx(none.makespan_s + jobs * 3.0, abs=0.2)
    evaluation = predict_run_eval(runs[0], None, lambda c: ROWS, [], [PROBE], errors=[],
                                  estimate=_estimate("a")).start_s  # the evaluation's own start-up
    line = {r.run: r for r in median_plan.runs}
    own_job = 3.0 if executor == "slurm" else 0.0  # a run's evaluation in its training's Ray job: no dispatch
    assert (line["a"].train_start_s, line["a"].eval_start_s) == (13.0, pytest.approx(evaluation + own_job))
    assert (line["base"].train_start_s, line["base"].eval_start_s) == (0.0, pytest.approx(evaluation + 3.0))
    words = f"+ 3.0 s {executor} job dispatch (history median of 3 jobs)"
    assert line["a"].train_start_source.endswith(words) and line["base"].eval_start_source.endswith(words)
    assert line["a"].eval_start_source.endswith(words) == (executor == "slurm")
    assert "dispatch" not in {r.run: r for r in none.runs}["a"].eval_start_source


def test_a_local_plan_adds_no_dispatch(write_spec):
    runs, local = _forecast(write_spec, {"cpu_runs_at_once": 1}, [])
    evaluation = predict_run_eval(runs[0], None, lambda c: ROWS, [], [PROBE], errors=[],
                                  estimate=_estimate("a")).start_s
    line = {r.run: r for r in local.runs}["a"]
    assert (line.train_start_s, line.eval_start_s) == (10.0, evaluation)
    assert "dispatch" not in line.train_start_source + line.eval_start_source


def test_the_replan_prices_the_dispatch_of_each_job_not_started_yet(write_spec):
    """On one Slurm lane: a run evaluating pays none (its job is submitted), one training pays its evaluation's, one
    waiting pays its training's and its evaluation's: 3 dispatches at the history's median (3.0 s)."""
    resources = {"executor": "slurm", "slurm": {"array_max_running": 1}}
    exp = write_spec(resources=resources).parent
    est = _estimate("x").model_copy(update={"eval_seconds": 20.0, "eval_source": "history"})
    runs = [_cfg(exp, name, resources, estimate=est.model_copy(update={"run": name})) for name in ("r1", "r2", "r3")]
    for cfg in runs:
        save_run_config(cfg, cfg.run_dir / "run.yaml")
    phases = {"r1": Phase.EVALUATING, "r2": Phase.TRAINING, "r3": Phase.WAITING}
    history.record([_row("z", "slurm", 0.0)])
    free = sweep_remaining(exp, phases, runs=runs)
    history.record([_row("z", "slurm", 3.0)])  # the same row, now 3 s
    paid = sweep_remaining(exp, phases, runs=runs)
    assert free.remaining_s is not None and paid.remaining_s == pytest.approx(free.remaining_s + 3 * 3.0, abs=0.2)
    left = {r.run: r.left_s for r in paid.runs}
    before = {r.run: r.left_s for r in free.runs}
    assert {k: round((left[k] or 0) - (before[k] or 0), 1) for k in left} == {"r1": 0.0, "r2": 3.0, "r3": 6.0}

