"""Each command's --json output validates against the schema `tunelab schema --output COMMAND` prints (the
types the MCP tools return), on a planned and scaffolded tiny experiment; a document missing a key does not.
stdout holds the JSON alone (progress goes to stderr): json.loads of stdout is that check. The commands that
need a trained sweep (run, eval, report, export) are in tests/e2e/test_json_outputs_sweep.py."""

from __future__ import annotations

import json
from pathlib import Path

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


def valid(args: list[str]) -> dict | list:
    """`tunelab ARGS` (with --json): its stdout parsed and validated against its command's schema."""
    doc = json.loads(ok(args))
    jsonschema.validate(doc, schema(args[0]))
    return doc


@pytest.fixture
def experiment(write_spec):
    spec = write_spec()
    made = valid(["scaffold", str(spec), "--json"])
    assert made == {"experiment_dir": str(spec.parent.resolve()), "runs": ["tiny_r4", "tiny_r8"],
                    "controls": ["tiny_base"]}
    return spec


@pytest.mark.slow  # plans and simulates the step's memory (no training): ~45 s on a loaded 2-core machine
def test_every_json_output_matches_its_schema(experiment, tmp_path, tiny_model, caps_dataset):
    exp = experiment.parent
    outputs = {"plan": ["plan", str(experiment), "--json"], "validate": ["validate", str(experiment), "--gpu", "A100-80GB", "--json"],
               "status": ["status", str(exp), "--json"], "results": ["results", str(exp), "--json"],
               "history": ["history", "--json"]}
    rows_key = {"plan": "runs", "validate": "checks", "status": "runs", "results": "runs", "history": "rows"}
    for command, args in outputs.items():
        doc = json.loads(ok(args))
        jsonschema.validate(doc, schema(command))
        assert set(doc) == set(schema(command)["properties"]), command  # one object, every key its schema's
        if command != "history":  # a run or check without its name is not the documented output
            broken = json.loads(json.dumps(doc))
            rows = broken[rows_key[command]]
            assert rows, command
            del rows[0]["run" if command in ("plan", "validate") else "name"]
            if command == "plan":  # its rows are the table's columns, untyped: break the list itself
                broken["runs"] = 3
            with pytest.raises(jsonschema.ValidationError):
                jsonschema.validate(broken, schema(command))
        with pytest.raises(jsonschema.ValidationError):  # the bare list these commands printed before
            jsonschema.validate(doc[rows_key[command]], schema(command))
    status = json.loads(ok(["status", str(exp), "--json"]))
    assert [r["name"] for r in status["runs"]] == ["tiny_r4", "tiny_r8", "tiny_base"]
    assert status["done"] and not status["sweep_running"] and status["experiment_dir"] == str(exp)  # nothing queued
    checks = json.loads(ok(outputs["validate"]))
    assert checks["ok"] and [c["run"] for c in checks["checks"]] == ["tiny_r4", "tiny_r8"]  # the controls train nothing
    scaffolded_experiment_commands(experiment, tmp_path, tiny_model, caps_dataset)


def scaffolded_experiment_commands(experiment: Path, tmp_path: Path, tiny_model: Path, caps_dataset: Path) -> None:
    """cancel, compare, archive and init --json on the scaffolded experiment (its scaffold shared)."""
    exp = experiment.parent
    assert valid(["cancel", str(exp), "--json"]) == {"cancelled_jobs": []}  # nothing queued: nothing cancelled
    compared = valid(["compare", str(exp), "--json"])
    assert [r["run"] for r in compared["runs"]] == ["exp/tiny_r4", "exp/tiny_r8", "exp/tiny_base"]
    assert compared["differing"] == ["training.lora_rank", "factor.lora_rank"]  # the one factor, nothing else
    archived = valid(["archive", str(exp), "--to", str(tmp_path / "archive"), "--dry-run", "--json"])
    assert archived["dry_run"] and archived["archive_dir"] == str(tmp_path / "archive" / "exp")
    assert "experiment.yaml" in archived["copied"] and not (tmp_path / "archive").exists()
    drafted = valid(["init", "--model", str(tiny_model), "--dataset", str(caps_dataset), "--vary", "lora_rank=4,16",
                     "--gpus-per-run", "0", "--out", str(tmp_path / "drafted"), "--json"])
    assert drafted["spec"] == str(tmp_path / "drafted" / "experiment.yaml")
    assert len(drafted["runs"]) == 2 and drafted["controls"] == ["tiny_base"]
    assert (tmp_path / "drafted" / "experiment.yaml").is_file()


def test_builders_ingest_and_skills_print_their_schema(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))  # this test's rows alone
    logs = Path(__file__).parent.parent / "fixtures" / "logs"
    ingested = valid(["ingest", str(logs / "torchtune_ok.out"), str(logs / "not_a_log.out"), "--json"])
    assert [(Path(r["path"]).name, r["imported"]) for r in ingested["logs"]] == [("torchtune_ok.out", True),
                                                                                 ("not_a_log.out", False)]
    (row,) = valid(["history", "--json"])["rows"]  # the row just ingested, typed
    assert row["kind"] == "ingested" and row["origin_where"].startswith(str(logs / "torchtune_ok.out"))
    data = valid(["data", "capitalization", "--word-len", "4", "--num-words", "40", "--out", str(tmp_path), "--json"])
    assert Path(data["paths"][0]).is_file() and data["built"]
    model = valid(["models", "tiny", "--layers", "1", "--hidden", "32", "--out", str(tmp_path / "m"), "--json"])
    assert model["paths"] == [str(tmp_path / "m")] and model["parameters"] > 0
    skills = valid(["skills", "install", "--dir", str(tmp_path / "skills"), "--json"])
    assert sorted(Path(p).parent.name for p in skills["paths"]) == ["adopt-runs", "plan-experiment", "run-experiment",
                                                             "summarize-experiment"]


def test_every_json_option_has_a_schema():
    """A command taking --json has `schema --output` for it (its first word: data, models, skills groups)."""
    import typer.main

    from tunelab.cli.start import output_adapters

    def with_json(group, prefix: str = "") -> set[str]:  # typer's own click: read by attributes
        found = set()
        for name, cmd in group.commands.items():
            if hasattr(cmd, "commands"):
                found |= {name for _ in with_json(cmd, name)}
            elif any("--json" in getattr(p, "opts", ()) for p in cmd.params):
                found.add(prefix or name)
        return found

    taking_json = with_json(typer.main.get_command(app))
    assert {"plan", "run", "eval", "estimate", "data", "models", "skills"} <= taking_json
    assert taking_json <= set(output_adapters())


def test_a_schema_documents_every_key():
    """Every property of every output carries a description (stable, documented keys), the rows' keys too
    (status, validate, history and probe rows are dataclasses of their packages, described field by field)."""
    from tunelab.cli.start import output_adapters

    for command in output_adapters():
        doc = schema(command)
        assert doc["type"] == "object", command  # one object per output, as the MCP tool returns it
        for name, definition in [("", doc), *doc.get("$defs", {}).items()]:
            for key, prop in definition.get("properties", {}).items():
                assert prop.get("description"), (command, name, key)
    for command, row, keys in (("status", "StatusRow", {"name", "state", "failure", "eval", "progress", "active"}),
                               ("validate", "RunCheck", {"run", "peak_memory_gib", "errors", "warnings"}),
                               ("history", "HistoryRun", {"key", "kind", "tokens_per_s", "origin_where"}),
                               ("probe", "HistoryRun", {"key", "kind", "lora_rank", "packed"})):
        assert keys <= set(schema(command)["$defs"][row]["properties"]), command  # the rows are walked


def test_unknown_output_is_one_line():
    res = runner.invoke(app, ["schema", "--output", "nope"])
    assert res.exit_code == 1 and "known: adopt, archive, cancel, compare" in res.output
