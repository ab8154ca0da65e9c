"""Each command's --json output validates against the schema `tunelab schema --output COMMAND` prints (the
types the MCP tools return), on a planned and scaffolded tiny experiment; a document missing a key does not."""

from __future__ import annotations

import json

import jsonschema
import pytest
from typer.testing import CliRunner

from tunelab.cli import app

runner = CliRunner()


def ok(args: list[str]) -> str:
    res = runner.invoke(app, args)
    assert res.exit_code == 0, (args, res.output)
    return res.stdout


def schema(command: str) -> dict:
    return json.loads(ok(["schema", "--output", command]))


@pytest.fixture
def experiment(write_spec):
    spec = write_spec()
    ok(["scaffold", str(spec)])
    return spec


@pytest.mark.slow  # plans and simulates the step's memory (no training): ~45 s on a loaded 2-core machine
def test_every_json_output_matches_its_schema(experiment):
    exp = experiment.parent
    outputs = {"plan": ["plan", str(experiment), "--json"], "validate": ["validate", str(experiment), "--gpu", "A100-80GB", "--json"],
               "status": ["status", str(exp), "--json"], "results": ["results", str(exp), "--json"],
               "history": ["history", "--json"]}
    for command, args in outputs.items():
        doc = json.loads(ok(args))
        jsonschema.validate(doc, schema(command))
        if command != "history":  # a run or check without its name is not the documented output
            broken = json.loads(json.dumps(doc))
            rows = broken["runs"] if command == "plan" else broken
            assert rows, command
            del rows[0]["run" if command in ("plan", "validate") else "name"]
            if command == "plan":
                broken["runs"] = 3
            with pytest.raises(jsonschema.ValidationError):
                jsonschema.validate(broken, schema(command))
    status = json.loads(ok(["status", str(exp), "--json"]))
    assert [r["name"] for r in status] == ["tiny_r4", "tiny_r8", "tiny_base"]


def test_unknown_output_is_one_line():
    res = runner.invoke(app, ["schema", "--output", "nope"])
    assert res.exit_code == 1 and "known: history, plan, results, status, validate" in res.output
