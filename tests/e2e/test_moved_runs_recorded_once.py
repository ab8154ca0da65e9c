"""A moved or copied experiment's finished runs are recorded once (issue 65): the history's row of a run, its
prediction checks and its evaluations' generation rows are keyed by the run's identity (rundir/identity.py), which
`mv` and `cp -r` keep, not by its absolute directory. Tried as a user would, on a copy of the shared finished sweep
in a history of its own: `tunelab results A` (its first ingest); `mv A B`, `tunelab run B` (nothing to train), `tunelab report B`;
`cp -r B C`, the same on C."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.ledger import generation, history, predictions
from tunelab.ledger import store as ledger
from tunelab.ledger.generation import GenerationOrigin
from tunelab.rundir.experiment import load_runs
from tunelab.rundir.summary import read_summary

pytestmark = pytest.mark.slow


def _tunelab(*args: str | Path) -> None:
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, f"tunelab {' '.join(map(str, args))}: {res.output}"


def _run_and_report(exp: Path) -> None:
    """`tunelab run` (every run finished: no job started) and `tunelab report`, as a user would after moving."""
    jobs = ledger.query(exp, "SELECT id FROM jobs")
    _tunelab("run", exp)
    assert ledger.query(exp, "SELECT id FROM jobs") == jobs  # nothing trained or evaluated again
    _tunelab("report", exp)


def _recorded() -> tuple[list[tuple[str | None, str | None]], Counter, list[str | None]]:
    """What the history holds: (experiment, run) of each training row, each prediction check's (run, part) with
    how many times, and each measured generation row's scores.json."""
    rows = sorted((r.experiment, r.run) for r in history.load(everything=True))
    checks = Counter((r.run, str(r.part)) for r in predictions.load(everything=True))
    made = sorted(r.origin_where for r in generation.load() if r.origin == GenerationOrigin.MEASURED)
    return rows, checks, made


def test_a_moved_and_a_copied_experiments_finished_runs_are_recorded_once(finished_sweep, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))  # the copies stay out of the session's
    a, b, c = tmp_path / "A", tmp_path / "B", tmp_path / "C"
    shutil.copytree(finished_sweep.exp, a, symlinks=True)  # the shared sweep is only read
    _tunelab("results", a)  # A's runs recorded in this history: the first time
    experiment = load_runs(a)[0].experiment
    trained = sorted((experiment, run) for run in finished_sweep.runs)  # a row per fine-tuned run, none per control
    scores = sorted(str(p.relative_to(a)) for p in a.glob("*/*/eval/*/*/scores.json"))
    assert len(scores) == 2 * finished_sweep.epochs + 1  # each epoch of both runs, and the control, one task
    rows, checks, made = _recorded()
    assert rows == trained and [str(Path(w).relative_to(a)) for w in made] == scores
    assert set(checks.values()) == {1}
    assert {(run, "train") for run in finished_sweep.runs} | {(finished_sweep.control, "eval")} <= set(checks)
    assert {(run, "eval") for run in finished_sweep.runs} <= set(checks)

    shutil.move(a, b)
    _run_and_report(b)
    shutil.copytree(b, c, symlinks=True)
    _run_and_report(c)

    rows_now, checks_now, made_now = _recorded()
    assert rows_now == trained  # each finished run once, not once per directory it was ingested from
    assert checks_now == checks  # each prediction check once
    assert [str(Path(w).relative_to(c)) for w in made_now] == scores  # replaced, by C's
    # what the next plan learns speeds from (plan/planner.py reads history.load()): one row per finished run, with
    # its summary's tokens/s (one process: per device is the run's)
    summaries = {run: read_summary(c / "runs" / run) for run in finished_sweep.runs}
    speeds = [(r.run, r.tokens_per_s) for r in history.load()]
    assert sorted(speeds) == sorted((run, s.tokens_per_s) for run, s in summaries.items() if s and s.tokens_per_s)
