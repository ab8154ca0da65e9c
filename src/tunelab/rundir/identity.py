"""A run's identity in the user's history: what keys its history row, prediction checks and generation rows, so a moved
or copied experiment's finished runs are recorded once.

Not the absolute directory (`mv`/`cp -r` would record the same measurement again), nor run.yaml's content (two
experiments from one spec are two measurements). A key names the measurement by marks written once by the process that
took it and carried unchanged by `mv` and `cp -r`: `<experiment>/<run dir>@<hash of its marks>`.
- Training: status.json's first start (kept across resumes; `--force` clears it, so a retrain is new) with the host and
  process that completed it; an adopted run's source and adoption time.
- Each target × task's evaluation: its scores.json's time and log name, so a copy evaluated again is new. A run without
  marks keeps its absolute directory as key; recorded under its identity, it drops its rows under its directory
  (ledger/store.py)."""

from __future__ import annotations

import hashlib
import json

from tunelab.rundir.config import KIND_DIRS, RunConfig
from tunelab.rundir.layout import EVAL_DIR
from tunelab.rundir.scores import TaskScores, read_scores
from tunelab.rundir.status import Status, read_status

STARTED_MARKS = ("first_started_at", "host", "pid")  # a trained run's status.json, fixed once it completed
ADOPTED_MARKS = ("adopted_from", "finished_at")  # tunelab adopt's status.json, written once


def run_place(cfg: RunConfig) -> str:
    """`<experiment>/<run dir relative to the experiment>`: the same wherever the experiment directory is."""
    try:
        inside = cfg.run_dir.relative_to(cfg.experiment_dir).as_posix()
    except ValueError:  # a run directory recorded outside its experiment: its place by the layout
        inside = f"{KIND_DIRS[cfg.kind]}/{cfg.name}"
    return f"{cfg.experiment}/{inside}"


def _keyed(cfg: RunConfig, marks: dict[str, object], where: str = "") -> str:
    """`<place><where>@<hash of the marks>`, or the run's directory (with `where`) when there are none."""
    if not any(v is not None for v in marks.values()):
        return f"{cfg.run_dir}{where}"
    digest = hashlib.sha256(json.dumps(marks, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{run_place(cfg)}{where}@{digest}"


def training_key(cfg: RunConfig, status: Status | None = None) -> str:
    """The key of the run's training (history row, training checks): status.json's marks."""
    status = read_status(cfg.run_dir) if status is None else status
    names = STARTED_MARKS if status.first_started_at else ADOPTED_MARKS if status.adopted_from else ()
    return _keyed(cfg, {name: getattr(status, name) for name in names})


def _scores_marks(scores: TaskScores) -> dict[str, object]:
    return {"evaluated_at": scores.evaluated_at, "log": scores.log}


def evaluation_key(cfg: RunConfig, scores: list[TaskScores] | None = None) -> str:
    """The key of the run's evaluation (its prediction check): its first scores.json's marks, which the scores
    written later (the evaluation going on from partial to complete) keep."""
    scores = read_scores(cfg.run_dir) if scores is None else scores
    first = min(scores, key=lambda s: (s.evaluated_at, s.label, s.task), default=None)
    return _keyed(cfg, _scores_marks(first) if first is not None else {})


def run_key(cfg: RunConfig, status: Status | None = None, scores: list[TaskScores] | None = None) -> str:
    """The key of the run's prediction checks: its training's, or for a run that never trains its evaluation's, so a
    run's parts sum up together (forecast/combine.py) and an evaluation done again replaces its check."""
    return training_key(cfg, status) if cfg.kind == "finetune" else evaluation_key(cfg, scores)


def scores_key(cfg: RunConfig, scores: TaskScores) -> str:
    """The key of one target × task's evaluation (its generation row): its scores.json's marks."""
    return _keyed(cfg, _scores_marks(scores), f"/{EVAL_DIR}/{scores.label}/{scores.task}")
