"""The loop closed: every finished run's predicted times beside what it measured, part by part (table `predictions`), so
the next plan on the device corrects each source by its errors (forecast/interval.py).

A row compares the prediction before correction with the measurement, so corrections never compound. A measurement under
contention is kept but marked (its error is the load's); an evaluation that scored less than it priced is kept
`partial`, left out of `load` until the complete one replaces it."""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

from tunelab.fsutil import add_missing_columns
from tunelab.host.cpuload import LoadWindow
from tunelab.ledger.history import connect, history_path
from tunelab.rundir import identity
from tunelab.rundir.config import RunConfig
from tunelab.rundir.estimate import SourceKind
from tunelab.rundir.scores import TaskScores
from tunelab.rundir.status import now_iso
from tunelab.rundir.summary import Summary

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    key TEXT PRIMARY KEY,
    part TEXT NOT NULL,
    device TEXT,
    source TEXT,
    predicted_s REAL,
    measured_s REAL,
    contended INTEGER,
    experiment TEXT,
    run TEXT,
    recorded_at TEXT
);
"""
# added since the table was first written (an older file gains them; its rows read NULL there: complete, as
# they were taken to be)
ADDED_COLUMNS = {"partial": "INTEGER", "targets_done": "INTEGER", "targets_predicted": "INTEGER",
                 "samples_done": "INTEGER", "samples_predicted": "INTEGER"}


class PredictedPart(StrEnum):
    """Which part of a run's time a prediction is of."""

    TRAIN_START = "train_start"  # process start to the first step (imports, model load, tokenization)
    TRAIN = "train"  # the first step to the end of the job (validations, saves, the finish)
    EVAL = "eval"  # every target × task on loaded weights


@dataclass(frozen=True)
class PredictionRecord:
    """One part of one run: predicted (before correction) and measured, with the source's kind."""

    key: str
    part: PredictedPart
    device: str
    source: str  # forecast/interval.py SourceKind's word
    predicted_s: float
    measured_s: float
    contended: bool | None = None
    experiment: str | None = None
    run: str | None = None
    recorded_at: str | None = None
    # an evaluation's coverage: targets with every task scored and samples scored, of those run.yaml priced; partial
    # when fewer (None: a training part, or a row recorded before coverage was)
    partial: bool | None = None
    targets_done: int | None = None
    targets_predicted: int | None = None
    samples_done: int | None = None
    samples_predicted: int | None = None

    @property
    def ratio(self) -> float:
        return self.measured_s / self.predicted_s


def record(rows: list[PredictionRecord], path: Path | None = None) -> None:
    if not rows:
        return
    cols = list(asdict(rows[0]))
    with connect(path) as conn:
        _schema(conn)
        conn.executemany(f"INSERT OR REPLACE INTO predictions ({', '.join(cols)}) VALUES "
                         f"({', '.join('?' * len(cols))})", [tuple(asdict(r).values()) for r in rows])


def load(path: Path | None = None, everything: bool = False) -> list[PredictionRecord]:
    """The records a correction may learn from (complete measurements), or with `everything` partial ones too."""
    p = path or history_path()
    if not p.is_file():
        return []
    where = "" if everything else " WHERE partial IS NOT 1"
    with connect(p) as conn:
        _schema(conn)
        rows = [dict(r) for r in conn.execute(f"SELECT * FROM predictions{where} ORDER BY recorded_at")]
    return [PredictionRecord(**{**r, "part": PredictedPart(r["part"]), "contended": _bool(r["contended"]),
                                "partial": _bool(r["partial"])}) for r in rows]


def _schema(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)
    add_missing_columns(conn, "predictions", ADDED_COLUMNS)


def _bool(value: int | None) -> bool | None:
    return None if value is None else bool(value)


def _device(summary: Summary | None) -> str:
    return (summary.device if summary is not None and summary.device else "cpu").lower()


def training_records(cfg: RunConfig, summary: Summary, run_key: str | None = None) -> list[PredictionRecord]:
    """The training job's parts (start-up and the rest) where predicted, keyed by the training's identity."""
    est = cfg.estimate
    if est is None or cfg.training is None or summary.duration_s is None:
        return []
    contended = _contended(summary)
    base = dict(device=_device(summary), contended=contended, experiment=cfg.experiment, run=cfg.name,
                recorded_at=now_iso())
    run = run_key or identity.training_key(cfg)
    out = []
    startup = est.startup_raw_s if est.startup_raw_s is not None else est.startup_s
    measured_start = summary.cold_startup_s()  # a warm job's with its warm process's imports: the start predicted
    if startup and measured_start is not None and est.startup_kind:
        out.append(PredictionRecord(key=f"{run}#{PredictedPart.TRAIN_START}", part=PredictedPart.TRAIN_START,
                                    source=est.startup_kind, predicted_s=startup, measured_s=measured_start,
                                    **base))  # type: ignore[arg-type]
    seconds = est.seconds_raw if est.seconds_raw is not None else est.seconds
    if seconds and est.time_kind:
        train = seconds - (startup or 0.0)
        measured = summary.duration_s + (summary.finish_s or 0.0)
        if train > 0 and measured > 0:
            out.append(PredictionRecord(key=f"{run}#{PredictedPart.TRAIN}", part=PredictedPart.TRAIN,
                                        source=est.time_kind, predicted_s=round(train, 3), measured_s=measured,
                                        **base))  # type: ignore[arg-type]
    return out


def eval_records(cfg: RunConfig, scores: list[TaskScores], summary: Summary | None,
                 run_key: str | None = None) -> list[PredictionRecord]:
    """The evaluation's part: its tasks' wall time (shared evenly where run at once) against run.yaml's prediction, with
    its load, partial while less is scored than priced. None where run.yaml does not say what it priced."""
    est = cfg.estimate
    if est is None or not est.eval_source or not est.eval_targets or est.eval_samples is None:
        return []
    predicted = est.eval_raw_s if est.eval_raw_s is not None else est.eval_seconds
    tasks = {t.name for t in cfg.eval.resolved_tasks()}
    mine = [s for s in scores if s.task in tasks]
    measured = sum(s.duration_s / max(1, s.concurrent or 1) for s in mine)
    if not predicted or not measured:
        return []
    done = sum(1 for label in {s.label for s in mine} if {s.task for s in mine if s.label == label} >= tasks)
    samples = sum(s.samples for s in mine)
    of_samples = est.eval_samples * est.eval_targets
    load = _eval_load(mine)
    device = getattr(mine[0], "device", None) or _device(summary)
    run = run_key or identity.run_key(cfg, scores=scores)
    return [PredictionRecord(key=f"{run}#{PredictedPart.EVAL}", part=PredictedPart.EVAL, device=device.lower(),
                             source=SourceKind.of_eval_source(est.eval_source), predicted_s=predicted,
                             measured_s=round(measured, 3), contended=None if load is None else load.contended,
                             experiment=cfg.experiment, run=cfg.name, recorded_at=now_iso(),
                             partial=done < est.eval_targets or samples < of_samples, targets_done=done,
                             targets_predicted=est.eval_targets, samples_done=samples, samples_predicted=of_samples)]


def _eval_load(scores: list[TaskScores]) -> LoadWindow | None:
    """The load over an evaluation's tasks, as one window (None: a task's load unknown, e.g. an older scores.json).
    A wave's tasks ran at once: their windows overlap, and combined their shares are averaged over them."""
    windows = [s.load for s in scores if s.load is not None]
    return LoadWindow.combined(windows) if len(windows) == len(scores) else None


def _contended(summary: Summary) -> bool | None:
    load = getattr(summary, "load", None)
    if load is None:
        return None
    return bool(getattr(load, "contended", False))
