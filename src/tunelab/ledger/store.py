"""The ledger: one SQLite file per experiment (rollback journal), filled only by the coordinating process.

Jobs write files in their run directory; `ingest_run` reads them back. Many jobs on many nodes
never write to one SQLite file on a shared filesystem, where concurrent writers are fragile.
Ingesting is idempotent: it replaces what it knew of a run with what the files say now.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, TypeVar

from tunelab.ledger import history
from tunelab.rundir.experiment import LEDGER_FILE, is_evaluated, task_names, training_state
from tunelab.faults import kill_point
from tunelab.fsutil import add_missing_columns, sqlite_session
from tunelab.rundir.config import RunConfig
from tunelab.rundir.layout import COMPLETED, PENDING
from tunelab.rundir.metrics import MetricRow, read_metrics
from tunelab.rundir.scores import TaskScores, read_scores, task_dir
from tunelab.rundir.status import Status, now_iso, read_status
from tunelab.rundir.summary import Summary, read_summary
from tunelab.stats.records import Interval

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


# ---------------------------------------------------------------- typed rows, one class per table
@dataclass(frozen=True)
class RunRow:
    """Table runs: one run as its directory read when last ingested."""

    name: str
    kind: str  # finetune | control | eval_only
    experiment: str
    model: str
    dataset: str
    factors: str  # JSON of run.yaml's factors
    run_dir: str
    config: str  # run.yaml, as JSON
    state: str
    attempt: int | None
    steps: int | None
    final_loss: float | None
    best_loss: float | None
    final_val_loss: float | None
    best_val_loss: float | None
    duration_s: float | None
    tokens_per_s: float | None
    nonpad_fraction: float | None
    peak_memory_gib: float | None
    memory_kind: str | None
    error: str | None
    summary: str | None  # summary.json, as JSON
    updated_at: str


@dataclass(frozen=True, kw_only=True)
class EvaluatedTask:
    """One task evaluated on one checkpoint of a run: what every eval row of it shares."""

    label: str  # epoch_N | base | checkpoint
    epoch: int | None = None
    task: str
    builtin: str | None = None
    file: str | None = None  # a user's task file
    dataset: str | None = None
    split: str | None = None
    samples: int | None = None
    log_path: str | None = None
    evaluated_at: str | None = None


@dataclass(frozen=True, kw_only=True)
class EvalRow(EvaluatedTask):
    """Table evals: one metric of one task on one checkpoint of a run."""

    run: str
    metric: str
    value: float | None  # None: undefined on these samples
    is_primary: bool  # the task's headline metric
    greater_is_better: bool
    kind: str | None
    duration_s: float | None
    ci_low: float | None
    ci_high: float | None
    ci_method: str | None
    ci_seed: int | None
    ci_resamples: int | None

    @property
    def interval(self) -> Interval | None:
        """The metric's 95 % interval (None where none was computed)."""
        if self.ci_low is None or self.ci_high is None or self.ci_method is None:
            return None
        return Interval(low=self.ci_low, high=self.ci_high, method=self.ci_method, seed=self.ci_seed,
                        resamples=self.ci_resamples)


@dataclass(frozen=True)
class AttemptRow:
    """Table attempts: one start of a run's job and how it ended."""

    id: int
    run: str
    attempt: int | None = None
    executor: str | None = None
    job_id: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    exit_code: int | None = None
    state: str | None = None
    reason: str | None = None


Row = TypeVar("Row", RunRow, EvalRow, AttemptRow)
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


def read_attempts(experiment_dir: str | Path) -> list[AttemptRow]:
    """Every attempt, oldest first."""
    return _read(experiment_dir, AttemptRow, "SELECT * FROM attempts ORDER BY id")


def ledger_path(experiment_dir: str | Path) -> Path:
    return Path(experiment_dir) / LEDGER_FILE


@contextmanager
def connect(experiment_dir: str | Path) -> Iterator[sqlite3.Connection]:
    """Open (and create) the experiment's ledger; commit on success, roll back on error.

    Rollback journal and a busy timeout (fsutil.sqlite_session): experiments live on NFS/Lustre/GPFS."""
    with sqlite_session(ledger_path(experiment_dir)) as conn:
        _migrate(conn)
        conn.executescript(SCHEMA)
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


def _control_state(cfg: RunConfig) -> str:
    """Controls and eval-only runs are done once a checkpoint has every task scored."""
    return COMPLETED if is_evaluated(cfg.run_dir, task_names(cfg)) else PENDING


def ingest_run(conn: sqlite3.Connection, cfg: RunConfig) -> str:
    """Replace the ledger's view of one run with what its directory holds now; return its state."""
    summary = read_summary(cfg.run_dir)
    state = training_state(cfg.run_dir) if cfg.kind == "finetune" else _control_state(cfg)
    _put_run(conn, cfg, state, read_status(cfg.run_dir), summary)
    if state == COMPLETED and summary is not None and cfg.kind == "finetune":
        # later plans, in any experiment, learn from every completed run
        history.record([history.from_run_dir(cfg, summary)])
    _put_metrics(conn, cfg.name, read_metrics(cfg.run_dir))
    kill_point("ledger.ingest", cfg.name)  # the fault benchmark: mid-transaction, history already recorded
    _put_evals(conn, cfg.name, cfg.run_dir, read_scores(cfg.run_dir))
    return state


def _put_run(conn: sqlite3.Connection, cfg: RunConfig, state: str, status: Status, summary: Summary | None) -> None:
    values = [getattr(summary, k) if summary else None for k in RUN_COLUMNS]
    conn.execute(
        f"""INSERT OR REPLACE INTO runs (name, kind, experiment, model, dataset, factors, run_dir, config,
            state, attempt, {", ".join(RUN_COLUMNS)}, error, summary, updated_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {", ".join("?" * len(RUN_COLUMNS))}, ?, ?, ?)""",
        (
            cfg.name, cfg.kind, cfg.experiment, cfg.model.name, cfg.dataset.name,
            json.dumps(cfg.factors), str(cfg.run_dir), json.dumps(cfg.model_dump(mode="json")),
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
    with connect(experiment_dir) as conn:
        return {cfg.name: ingest_run(conn, cfg) for cfg in runs}


def record_attempt(experiment_dir: str | Path, *, run: str, attempt: int | None, executor: str | None,
                   job_id: str | None, started_at: str | None, finished_at: str | None, exit_code: int | None,
                   state: str | None, reason: str | None) -> None:
    """One ended start of a run's job (table attempts)."""
    _insert(experiment_dir, "attempts", dict(
        run=run, attempt=attempt, executor=executor, job_id=job_id, started_at=started_at, finished_at=finished_at,
        exit_code=exit_code, state=state, reason=reason))


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
