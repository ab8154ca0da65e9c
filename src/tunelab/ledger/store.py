"""The ledger: one SQLite file per experiment, filled only by the coordinating process from the files jobs write
(concurrent writers on a shared filesystem are fragile). Ingesting is idempotent and happens once per change
(stamps.py)."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tunelab.faults import kill_point
from tunelab.fsutil import add_missing_columns, sqlite_session
from tunelab.ledger import generation, history, predictions
from tunelab.ledger.generation import TABLE as GENERATION
from tunelab.ledger.predictions import PredictedPart
from tunelab.ledger.rows import EvalRow, RunRow
from tunelab.ledger.slowdown import loaded, measured_slowdown
from tunelab.ledger.stamps import SCHEMA as STAMPS_SCHEMA
from tunelab.ledger.stamps import read_ingested, run_stamps, write_stamps
from tunelab.ledger.submission import training_job
from tunelab.rundir.config import RunConfig
from tunelab.rundir.experiment import LEDGER_FILE, is_evaluated, task_names, training_state
from tunelab.rundir.identity import run_key, scores_key, training_key
from tunelab.rundir.layout import COMPLETED, PENDING, RUNNING
from tunelab.rundir.metrics import MetricRow, read_metrics
from tunelab.rundir.scores import TaskScores, read_scores, task_dir
from tunelab.rundir.status import Status, now_iso, read_status
from tunelab.rundir.summary import Summary, read_summary


def directory_keys(run_dir: Path, scores: list[TaskScores]) -> dict[str, list[str]]:
    """{table: the keys the run's rows had there before identities}."""
    return {"history": [str(run_dir)],
            "predictions": [f"{run_dir}#{part}" for part in PredictedPart],
            GENERATION: [f"eval:{task_dir(run_dir, s.label, s.task)}" for s in scores]}


def drop_directory_rows(run_dir: Path, scores: list[TaskScores], path: Path | None = None) -> None:
    """Delete the run's rows keyed by its directory (nothing without a history file)."""
    p = path or history.history_path()
    if not p.is_file():
        return
    with history.connect(p) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table, keys in directory_keys(run_dir, scores).items():
            if table in tables and keys:
                conn.executemany(f"DELETE FROM {table} WHERE key = ?", [(k,) for k in keys])


SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    experiment TEXT NOT NULL,
    model TEXT NOT NULL,
    dataset TEXT NOT NULL,
    factors TEXT NOT NULL,
    run_dir TEXT NOT NULL,
    config TEXT NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER,
    steps INTEGER,
    final_loss REAL,
    best_loss REAL,
    final_val_loss REAL,
    best_val_loss REAL,
    duration_s REAL,
    tokens_per_s REAL,
    nonpad_fraction REAL,
    peak_memory_gib REAL,
    memory_kind TEXT,
    error TEXT,
    summary TEXT,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS metrics (
    run TEXT NOT NULL,
    step INTEGER NOT NULL,
    is_eval INTEGER NOT NULL,
    epoch REAL,
    loss REAL,
    val_loss REAL,
    lr REAL,
    tokens INTEGER,
    nonpad_tokens INTEGER,
    tokens_per_s REAL,
    peak_memory_gib REAL,
    elapsed_s REAL,
    PRIMARY KEY (run, step, is_eval)
);
CREATE TABLE IF NOT EXISTS evals (   -- one row per run x checkpoint x task x metric
    run TEXT NOT NULL,
    label TEXT NOT NULL,             -- epoch_N | base | checkpoint
    epoch INTEGER,
    task TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL,                      -- NULL: undefined on these samples
    is_primary INTEGER NOT NULL,     -- the task's headline metric (its `score`)
    greater_is_better INTEGER NOT NULL,
    kind TEXT,
    builtin TEXT,
    file TEXT,
    dataset TEXT,
    split TEXT,
    samples INTEGER,
    log_path TEXT,
    duration_s REAL,
    evaluated_at TEXT,
    ci_low REAL,                     -- 95 % interval from the per-sample scores (NULL: none computed)
    ci_high REAL,
    ci_method TEXT,                  -- wilson | bootstrap-bca | bootstrap-percentile
    ci_seed INTEGER,                 -- the bootstrap's seed
    ci_resamples INTEGER,
    PRIMARY KEY (run, label, task, metric)
);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run TEXT NOT NULL,
    attempt INTEGER,
    executor TEXT,
    job_id TEXT,
    node TEXT,                       -- where it ran, as its scheduler names the node (NULL: unknown)
    started_at TEXT,
    finished_at TEXT,
    exit_code INTEGER,
    state TEXT,
    reason TEXT
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run TEXT NOT NULL,
    kind TEXT NOT NULL,              -- train | eval
    job_id TEXT NOT NULL,            -- the scheduler's id
    attempt INTEGER NOT NULL,        -- run.yaml's attempt when submitted
    executor TEXT NOT NULL,
    depends_on TEXT,                 -- afterok job id (eval after train)
    time_limit TEXT,
    submitted_at TEXT NOT NULL,
    state TEXT NOT NULL,             -- scheduler state: SUBMITTED, PENDING, RUNNING, COMPLETED, FAILED, TIMEOUT, ...
    exit_code TEXT,                  -- Slurm 'EXIT:SIGNAL'
    elapsed TEXT,
    node TEXT,
    failure TEXT,                    -- class once ended: completed, oom, timeout, preempted, node_fail, cancelled, failed
    detail TEXT,
    reason TEXT,                     -- why it was submitted (first, resubmission, retry reason)
    handled INTEGER NOT NULL DEFAULT 0,  -- the retry policy has judged this ended job
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_run ON jobs (run, kind);
"""

RUN_COLUMNS = (
    "steps", "final_loss", "best_loss", "final_val_loss", "best_val_loss", "duration_s",
    "tokens_per_s", "nonpad_fraction", "peak_memory_gib", "memory_kind",
)


# ---------------------------------------------------------------- typed rows (rows.py), read by table
Row = TypeVar("Row", RunRow, EvalRow)
_BOOLS = {"is_primary", "greater_is_better"}  # stored as INTEGER 0/1


def _read(experiment_dir: str | Path, cls: type[Row], sql: str, params: tuple[Any, ...] = ()) -> list[Row]:
    names = [f.name for f in dataclasses.fields(cls)]
    with connect(experiment_dir) as conn:
        rows = conn.execute(sql, params).fetchall()
    values: list[dict[str, Any]] = [{k: bool(r[k]) if k in _BOOLS else r[k] for k in names} for r in rows]
    return [cls(**v) for v in values]


def read_runs(experiment_dir: str | Path) -> list[RunRow]:
    return _read(experiment_dir, RunRow, "SELECT * FROM runs")


def read_evals(experiment_dir: str | Path) -> list[EvalRow]:
    return _read(experiment_dir, EvalRow, "SELECT * FROM evals")


def ledger_path(experiment_dir: str | Path) -> Path:
    return Path(experiment_dir) / LEDGER_FILE


@contextmanager
def connect(experiment_dir: str | Path) -> Iterator[sqlite3.Connection]:
    """Open (and create) the experiment's ledger; commit on success, roll back on error. Rollback journal and a busy
    timeout: experiments live on network filesystems."""
    with sqlite_session(ledger_path(experiment_dir)) as conn:
        _migrate(conn)
        conn.executescript(SCHEMA + STAMPS_SCHEMA)
        yield conn


CI_COLUMNS = {"ci_low": "REAL", "ci_high": "REAL", "ci_method": "TEXT", "ci_seed": "INTEGER",
              "ci_resamples": "INTEGER"}


def _migrate(conn: sqlite3.Connection) -> None:
    """Ledgers from before per-metric eval rows: drop the old evals table (ingest refills it from files).
    Ledgers from before intervals: add their columns (existing rows keep their values, intervals NULL)."""
    cols = {r[1] for r in conn.execute("PRAGMA table_info(evals)")}
    if cols and "is_primary" not in cols:
        conn.execute("DROP TABLE evals")
    elif cols:
        add_missing_columns(conn, "evals", CI_COLUMNS)
    if conn.execute("PRAGMA table_info(attempts)").fetchall():  # ledgers from before attempts named their node
        add_missing_columns(conn, "attempts", {"node": "TEXT"})


def _control_state(cfg: RunConfig) -> str:
    """Controls and eval-only runs are done once a checkpoint has every task scored."""
    return COMPLETED if is_evaluated(cfg.run_dir, task_names(cfg)) else PENDING


@dataclass
class IngestCount:
    """Runs this process has read from their files into a ledger: what shows that unchanged runs are skipped."""

    runs: int = 0


INGESTED = IngestCount()


def ingest_run(conn: sqlite3.Connection, cfg: RunConfig, config_json: str | None = None) -> str:
    """Replace the ledger's view of one run with what its directory holds now; return its state."""
    INGESTED.runs += 1
    summary = read_summary(cfg.run_dir)
    status = read_status(cfg.run_dir)
    scores = read_scores(cfg.run_dir)
    # the history's rows of the run are keyed by its identity, which a moved or copied experiment keeps: ingesting
    # the same measurement from another directory replaces its rows (rundir/identity.py)
    key = training_key(cfg, status)
    state = training_state(cfg.run_dir, status) if cfg.kind == "finetune" else _control_state(cfg)
    _put_run(conn, cfg, state, status, summary, config_json or _config_json(cfg))
    trained = summary if state == COMPLETED and cfg.kind == "finetune" else None
    if (key != str(cfg.run_dir) and trained is not None) or scores:
        drop_directory_rows(cfg.run_dir, scores)  # as an earlier tunelab recorded them
    if trained is not None:
        _record_training(conn, cfg, trained, key)
    _put_metrics(conn, cfg.name, read_metrics(cfg.run_dir))
    kill_point("ledger.ingest", cfg.name)  # the fault benchmark: mid-transaction, history already recorded
    _put_evals(conn, cfg.name, cfg.run_dir, scores)
    # later predictions of evaluation time learn from every finished evaluation's throughput
    generation.record([row for s in scores
                       if (row := generation.measured_row(cfg.run_dir, s, scores_key(cfg, s))) is not None])
    predictions.record(predictions.eval_records(cfg, scores, summary, run_key(cfg, status, scores)))
    return state


def _record_training(conn: sqlite3.Connection, cfg: RunConfig, summary: Summary, key: str) -> None:
    """Later plans, in any experiment, learn from every completed run: its history row (with its training job's
    dispatch, from this ledger's jobs) and its prediction checks."""
    job = training_job(conn, cfg.name, cfg.attempt if summary.attempt is None else summary.attempt)
    trained = history.from_run_dir(cfg, summary, key, job)
    if loaded(trained):  # timed beside others' work: what the load cost it, against the idle rows of its shape
        trained = dataclasses.replace(trained, measured_slowdown=measured_slowdown(trained, history.load()))
    history.record([trained])
    predictions.record(predictions.training_records(cfg, summary, key))  # the loop closed: each part's error


def _config_json(cfg: RunConfig) -> str:
    return json.dumps(cfg.model_dump(mode="json"))


def _put_run(conn: sqlite3.Connection, cfg: RunConfig, state: str, status: Status, summary: Summary | None,
             config_json: str) -> None:
    values = [getattr(summary, k) if summary else None for k in RUN_COLUMNS]
    conn.execute(
        f"""INSERT OR REPLACE INTO runs (name, kind, experiment, model, dataset, factors, run_dir, config,
            state, attempt, {", ".join(RUN_COLUMNS)}, error, summary, updated_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {", ".join("?" * len(RUN_COLUMNS))}, ?, ?, ?)""",
        (
            cfg.name, cfg.kind, cfg.experiment, cfg.model.name, cfg.dataset.name,
            json.dumps(cfg.factors), str(cfg.run_dir), config_json,
            state, cfg.attempt if status.attempt is None else status.attempt, *values, status.error,
            json.dumps(summary.to_json()) if summary else None, now_iso(),
        ),
    )


def _put_metrics(conn: sqlite3.Connection, run: str, rows: list[MetricRow]) -> None:
    conn.execute("DELETE FROM metrics WHERE run = ?", (run,))
    conn.executemany(
        """INSERT OR REPLACE INTO metrics (run, step, is_eval, epoch, loss, val_loss, lr, tokens, nonpad_tokens,
           tokens_per_s, peak_memory_gib, elapsed_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        [(run, r.step, int(r.is_validation), r.epoch, r.loss, r.val_loss, r.lr, r.tokens, r.nonpad_tokens,
          r.tokens_per_s, r.peak_memory_gib, r.elapsed_s) for r in rows if r.step is not None],
    )


def _put_evals(conn: sqlite3.Connection, run: str, run_dir: Path, scores: list[TaskScores]) -> None:
    conn.execute("DELETE FROM evals WHERE run = ?", (run,))
    conn.executemany(
        """INSERT OR REPLACE INTO evals (run, label, epoch, task, metric, value, is_primary, greater_is_better, kind,
           builtin, file, dataset, split, samples, log_path, duration_s, evaluated_at, ci_low, ci_high, ci_method,
           ci_seed, ci_resamples)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        [(run, s.label, s.epoch, s.task, metric, value, int(metric == s.primary_metric), int(s.greater_is_better),
          s.kind, s.builtin, s.file, s.dataset, s.split, s.samples,
          str(task_dir(run_dir, s.label, s.task) / s.log), s.duration_s, s.evaluated_at,
          *((iv.low, iv.high, iv.method, iv.seed, iv.resamples) if (iv := s.intervals.get(metric)) else (None,) * 5))
         for s in scores for metric, value in s.metrics.items()],
    )


def ingest_all(experiment_dir: str | Path, runs: list[RunConfig]) -> dict[str, str]:
    """Bring the ledger's view of these runs up to date and return each one's state. A run is read again only
    when its files or config changed since its last ingest, or while it is running (a job that died changes
    its state without changing a file)."""
    with connect(experiment_dir) as conn:
        known = read_ingested(conn)
        states = {}
        for cfg in runs:
            config_json = _config_json(cfg)
            stamps = run_stamps(cfg, config_json)  # before reading: a change while reading is caught next time
            last = known.get(cfg.name)
            if last is not None and last.stamps == stamps and last.state != RUNNING:
                states[cfg.name] = last.state
                continue
            states[cfg.name] = ingest_run(conn, cfg, config_json)
            write_stamps(conn, cfg.name, stamps)
        return states


def record_attempt(experiment_dir: str | Path, *, run: str, attempt: int | None, executor: str | None,
                   job_id: str | None, started_at: str | None, finished_at: str | None, exit_code: int | None,
                   state: str | None, reason: str | None, node: str | None = None) -> None:
    """One ended start of a run's job on `node` (table attempts; `state`: its FailureKind's value)."""
    _insert(experiment_dir, "attempts", dict(
        run=run, attempt=attempt, executor=executor, job_id=job_id, node=node, started_at=started_at,
        finished_at=finished_at, exit_code=exit_code, state=state, reason=reason))


def amend_attempt(experiment_dir: str | Path, *, run: str, job_id: str, state: str, reason: str,
                  exit_code: int | None) -> None:
    """A verdict judged again (accounting arrived after it), said by the newest attempt row of the run's job."""
    with connect(experiment_dir) as conn:
        conn.execute("UPDATE attempts SET state = ?, reason = ?, exit_code = ? WHERE id = "
                     "(SELECT MAX(id) FROM attempts WHERE run = ? AND job_id = ?)",
                     (state, reason, exit_code, run, job_id))


def query(experiment_dir: str | Path, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """Ad-hoc SQL, each row as {column: value}: for tests and debugging; code reads the typed rows above."""
    with connect(experiment_dir) as conn:
        return [dict(r) for r in conn.execute(sql, params).fetchall()]


def record_job(experiment_dir: str | Path, *, run: str, kind: str, job_id: str, attempt: int, executor: str,
               submitted_at: str, state: str, reason: str | None = None, depends_on: str | None = None,
               time_limit: str | None = None) -> int:
    """A submitted scheduler job (table jobs); returns its row id."""
    return _insert(experiment_dir, "jobs", dict(
        run=run, kind=kind, job_id=job_id, attempt=attempt, executor=executor, depends_on=depends_on,
        time_limit=time_limit, submitted_at=submitted_at, state=state, reason=reason, updated_at=now_iso()))


JOB_UPDATES = frozenset({"state", "exit_code", "elapsed", "node", "failure", "detail", "reason", "handled"})


def update_job(experiment_dir: str | Path, row_id: int, **changes: str | int | None) -> None:
    """What the scheduler (or the retry policy) says of a job now: columns of table jobs in JOB_UPDATES."""
    unknown = set(changes) - JOB_UPDATES
    if unknown:
        raise TypeError(f"not updatable fields of table jobs: {sorted(unknown)}")
    values = {**changes, "updated_at": now_iso()}
    with connect(experiment_dir) as conn:
        conn.execute(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ?",
                     (*values.values(), row_id))


def _insert(experiment_dir: str | Path, table: str, values: dict[str, Any]) -> int:
    with connect(experiment_dir) as conn:
        cur = conn.execute(f"INSERT INTO {table} ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                           tuple(values.values()))
        return int(cur.lastrowid or 0)
