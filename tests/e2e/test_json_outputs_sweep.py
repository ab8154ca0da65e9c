"""--json of the commands that need a trained sweep (run, eval, report, export, results, status), on a copy of
the shared finished sweep: stdout is the JSON document alone (progress on stderr) and it validates against
`tunelab schema --output COMMAND`. No training: the sweep is the session's; eval scores one checkpoint again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from tunelab.cli import app

pytestmark = pytest.mark.slow
runner = CliRunner()


def valid(args: list[str]) -> dict | list:
    res = runner.invoke(app, args)
    assert res.exit_code == 0, (args, res.output)
    doc = json.loads(res.stdout)  # nothing but the document on stdout
    schema = json.loads(runner.invoke(app, ["schema", "--output", args[0]]).stdout)
    jsonschema.validate(doc, schema)
    return doc


def test_sweep_commands_print_one_valid_document(finished_sweep, tmp_path, monkeypatch):
    # its evaluation of the copy is the shared sweep's run evaluated again: kept out of the session's history
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))
    exp = tmp_path / "exp"
    shutil.copytree(finished_sweep.exp, exp)  # eval, report and export write into the experiment
    ran = valid(["run", str(exp), "--json"])
    assert ran == {"experiment_dir": str(exp), "submitted": [], "pid": None, "log": None, "states": {}}  # all done

    res = runner.invoke(app, ["eval", str(exp), "--run", finished_sweep.runs[0], "--epochs", "last", "--force",
                              "--json"])
    assert res.exit_code == 0, res.output
    assert "evaluating" in res.stderr or finished_sweep.runs[0] in res.stderr  # progress went to stderr
    evaluated = json.loads(res.stdout)
    jsonschema.validate(evaluated, json.loads(runner.invoke(app, ["schema", "--output", "eval"]).stdout))
    (score,) = evaluated["evaluated"][finished_sweep.runs[0]]
    last = f"epoch_{finished_sweep.epochs - 1}"
    assert score["label"] == last and score["epoch"] == finished_sweep.epochs - 1 and score["samples"] > 0
    scores = json.loads(next((exp / "runs" / finished_sweep.runs[0] / "eval" / last).glob("*/scores.json"))
                        .read_text())
    assert (score["task"], score["metric"], score["score"]) == (scores["task"], scores["primary_metric"],
                                                                scores["score"])  # what scores.json holds

    reported = valid(["report", str(exp), "--json"])
    assert reported["markdown"] == str(exp / "report" / "report.md") and not reported["partial"]
    assert reported["resource"] is None and reported["figures"]
    assert all(Path(f).is_file() and Path(f).parent == exp / "report" / "figures" for f in reported["figures"])

    exported = valid(["export", str(exp), "--to", "mlflow", "--json"])
    names = [*finished_sweep.runs, finished_sweep.control]
    assert exported["tracker"] == "mlflow" and sorted(exported["written"]) == sorted(names)
    assert exported["tracking_uri"] == f"sqlite:///{exp / 'mlflow' / 'mlflow.db'}" and exported["points_logged"] > 0

    results = valid(["results", str(exp), "--json"])
    assert {r["name"]: r["state"] for r in results["runs"]} == {n: "completed" for n in names}
    status = valid(["status", str(exp), "--json"])
    assert [r["name"] for r in status["runs"]] == names and status["done"]
    assert {r["state"] for r in status["runs"]} == {"completed"} and not any(r["active"] for r in status["runs"])
