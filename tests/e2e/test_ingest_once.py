"""The ledger ingests a run once per change (ledger/stamps.py): on a finished sweep a second `tunelab results`
reads no run again, and a run whose summary changed, or was only touched, is the one read again."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.ledger import store

pytestmark = pytest.mark.slow


def _results(exp) -> tuple[int, dict[str, dict]]:
    """`tunelab results --json`: (runs ingested meanwhile, {run: its record})."""
    before = store.INGESTED.runs
    res = CliRunner().invoke(app, ["results", "--json", str(exp)])
    assert res.exit_code == 0, res.output
    return store.INGESTED.runs - before, {r["name"]: r for r in json.loads(res.stdout)["runs"]}


def test_results_ingests_only_runs_whose_files_changed(finished_sweep, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))  # the copy's runs stay out of the session's
    exp = tmp_path / "exp"
    shutil.copytree(finished_sweep.exp, exp, symlinks=True)  # the shared sweep is only read
    every_run = sorted(p.parent.name for kind in ("runs", "controls", "eval_only")
                       for p in exp.glob(f"{kind}/*/run.yaml"))
    assert every_run == sorted([*finished_sweep.runs, finished_sweep.control])

    ingested, first = _results(exp)  # moved: every run's config names another directory, so each is read
    assert ingested == len(every_run) and sorted(first) == every_run
    assert _results(exp) == (0, first)  # nothing changed: nothing read, the same records

    changed, touched = finished_sweep.runs
    summary_path = exp / "runs" / changed / "summary.json"
    summary = json.loads(summary_path.read_text())
    assert summary["final_loss"] != 0.125
    summary_path.write_text(json.dumps({**summary, "final_loss": 0.125}))
    ingested, after = _results(exp)
    assert ingested == 1 and after[changed]["final_loss"] == 0.125
    assert {k: v for k, v in after.items() if k != changed} == {k: v for k, v in first.items() if k != changed}

    stat = (exp / "runs" / touched / "summary.json").stat()
    os.utime(exp / "runs" / touched / "summary.json", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert _results(exp) == (1, after)  # touched only: read again, the same record
    assert _results(exp) == (0, after)
