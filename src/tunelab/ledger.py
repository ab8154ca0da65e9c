"""The ledger: one SQLite file per experiment (rollback journal), filled only by the coordinating process.

Jobs write files in their run directory; `ingest_run` reads them back. Many jobs on many nodes
never write to one SQLite file on a shared filesystem, where concurrent writers are fragile.
Ingesting is idempotent: it replaces what it knew of a run with what the files say now.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from tunelab import history
from tunelab.evaluate.scores import read_scores, task_dir
from tunelab.experiment import LEDGER_FILE, is_evaluated, task_names, training_state
from tunelab.faults import kill_point
from tunelab.fsutil import read_json, read_jsonl, sqlite_session
from tunelab.runconfig import RunConfig
from tunelab.train import status as st

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
        for name, kind in CI_COLUMNS.items():
            if name not in cols:
                conn.execute(f"ALTER TABLE evals ADD COLUMN {name} {kind}")


def _control_state(cfg: RunConfig) -> str:
    """Controls and eval-only runs are done once a checkpoint has every task scored."""
    return st.COMPLETED if is_evaluated(cfg.run_dir, task_names(cfg)) else st.PENDING


def ingest_run(conn: sqlite3.Connection, cfg: RunConfig) -> str:
    """Replace the ledger's view of one run with what its directory holds now; return its state."""
    run_dir = cfg.run_dir
    status = st.read_status(run_dir)
    summary = read_json(run_dir / st.SUMMARY_FILE, default=None) or {}
    state = training_state(run_dir) if cfg.kind == "finetune" else _control_state(cfg)
    values: dict[str, Any] = {k: summary.get(k) for k in RUN_COLUMNS}
    conn.execute(
        f"""INSERT OR REPLACE INTO runs (name, kind, experiment, model, dataset, factors, run_dir, config,
            state, attempt, {", ".join(RUN_COLUMNS)}, error, summary, updated_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {", ".join("?" * len(RUN_COLUMNS))}, ?, ?, ?)""",
        (
            cfg.name, cfg.kind, cfg.experiment, cfg.model.name, cfg.dataset.name,
            json.dumps(cfg.factors), str(run_dir), json.dumps(cfg.model_dump(mode="json")),
            state, status.get("attempt", cfg.attempt), *values.values(), status.get("error"),
            json.dumps(summary) if summary else None, st.now_iso(),
        ),
    )
    if state == st.COMPLETED and summary and cfg.kind == "finetune":
        # later plans, in any experiment, learn from every completed run
        history.record([history.from_run_dir(cfg, summary)])
    conn.execute("DELETE FROM metrics WHERE run = ?", (cfg.name,))
    conn.executemany(
        """INSERT OR REPLACE INTO metrics (run, step, is_eval, epoch, loss, val_loss, lr, tokens, nonpad_tokens,
           tokens_per_s, peak_memory_gib, elapsed_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        [
            (cfg.name, r.get("step"), int(r.get("val_loss") is not None), r.get("epoch"), r.get("loss"),
             r.get("val_loss"), r.get("lr"), r.get("tokens"), r.get("nonpad_tokens"), r.get("tokens_per_s"),
             r.get("peak_memory_gib"), r.get("elapsed_s"))
            for r in read_jsonl(run_dir / st.METRICS_FILE)
            if r.get("step") is not None
        ],
    )
    kill_point("ledger.ingest", cfg.name)  # the fault benchmark: mid-transaction, history already recorded
    conn.execute("DELETE FROM evals WHERE run = ?", (cfg.name,))
    conn.executemany(
        """INSERT OR REPLACE INTO evals (run, label, epoch, task, metric, value, is_primary, greater_is_better, kind,
           builtin, file, dataset, split, samples, log_path, duration_s, evaluated_at, ci_low, ci_high, ci_method,
           ci_seed, ci_resamples)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        [(cfg.name, s.label, s.epoch, s.task, metric, value, int(metric == s.primary_metric), int(s.greater_is_better),
          s.kind, s.builtin, s.file, s.dataset, s.split, s.samples,
          str(task_dir(run_dir, s.label, s.task) / s.log), s.duration_s, s.evaluated_at,
          *((iv.low, iv.high, iv.method, iv.seed, iv.resamples) if (iv := s.intervals.get(metric)) else (None,) * 5))
         for s in read_scores(run_dir) for metric, value in s.metrics.items()],
    )
    return state


def ingest_all(experiment_dir: str | Path, runs: list[RunConfig]) -> dict[str, str]:
    with connect(experiment_dir) as conn:
        return {cfg.name: ingest_run(conn, cfg) for cfg in runs}


def record_attempt(experiment_dir: str | Path, **fields: Any) -> None:
    cols = ", ".join(fields)
    with connect(experiment_dir) as conn:
        conn.execute(f"INSERT INTO attempts ({cols}) VALUES ({', '.join('?' * len(fields))})", tuple(fields.values()))


def query(experiment_dir: str | Path, sql: str, params: tuple = ()) -> list[dict[str, Any]]:
    with connect(experiment_dir) as conn:
        return [dict(r) for r in conn.execute(sql, params).fetchall()]


def record_job(experiment_dir: str | Path, **fields: Any) -> int:
    """A submitted scheduler job (table jobs); returns its row id."""
    fields.setdefault("updated_at", st.now_iso())
    cols = ", ".join(fields)
    with connect(experiment_dir) as conn:
        cur = conn.execute(f"INSERT INTO jobs ({cols}) VALUES ({', '.join('?' * len(fields))})",
                           tuple(fields.values()))
        return int(cur.lastrowid)


def update_job(experiment_dir: str | Path, row_id: int, **fields: Any) -> None:
    fields["updated_at"] = st.now_iso()
    with connect(experiment_dir) as conn:
        conn.execute(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?",
                     (*fields.values(), row_id))
