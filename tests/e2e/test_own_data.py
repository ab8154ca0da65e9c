"""A new user's own data, as they would bring it: a chat JSONL split by the spec and a CSV with its own
column names, through plan -> scaffold -> run -> eval -> results -> report with the CLI, on a tiny model.
One run trains (on the chat JSONL: a training job is a fresh process, ~15 s of imports); the CSV is read by
plan (provenance) and by eval (its own task on the run and its control). Training reads a dataset through the
same loader as eval (tunelab.data; CSV columns renamed by output_field: tests/unit/test_data.py)."""

from __future__ import annotations

import csv
import hashlib
import json

import pytest
import yaml
from typer.testing import CliRunner

from tunelab.cli import app

pytestmark = pytest.mark.slow
runner = CliRunner()


def _cli(*args: str) -> str:
    res = runner.invoke(app, list(args))
    assert res.exit_code == 0, res.output + (res.stderr if res.stderr_bytes else "")
    return res.stdout


@pytest.fixture(scope="module")
def own_data_experiment(tmp_path_factory, tiny_model, caps_dataset):
    root = tmp_path_factory.mktemp("own")
    words = json.loads(caps_dataset.read_text())
    everything = words["train"] + words["validation"] + words["test"]
    chat = root / "data" / "caps_chat.jsonl"
    chat.parent.mkdir()
    chat.write_text("".join(json.dumps({"messages": [
        {"role": "system", "content": "You capitalize words."},
        {"role": "user", "content": r["input"]},
        {"role": "assistant", "content": r["output"]}]}) + "\n" for r in everything))
    for split, rows in (("train", words["train"]), ("test", words["test"])):
        with open(root / "data" / f"caps_{split}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["word", "capitalized"])
            w.writerows([r["input"], r["output"]] for r in rows)
    spec = {
        "name": "own-data",
        "models": [{"name": "tiny", "path": str(tiny_model)}],
        "datasets": [
            {"name": "chat", "path": "data/caps_chat.jsonl", "split": {"validation": 0.1, "test": 0.1, "seed": 3}},
            {"name": "table", "train": "data/caps_train.csv", "test": "data/caps_test.csv",
             "output_field": "capitalized"},
        ],
        "prompt": "Capitalize: {word}",
        "factors": {"dataset": ["chat"]},
        # one epoch: what is checked is how the data is read, split, recorded and scored, not how well it is learnt
        "training": {"epochs": 1, "learning_rate": 0.002, "batch_size": 8, "max_seq_len": 64,
                     "modules_to_save": ["embed_tokens", "lm_head"], "logging_steps": 10},
        "eval": {"max_tokens": 8, "tasks": ["exact_match",
                                            {"name": "table_test", "builtin": "exact_match", "dataset": "table"}]},
    }
    spec_path = root / "experiment.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    _cli("scaffold", str(spec_path))
    _cli("run", str(root))
    _cli("eval", str(root))
    _cli("report", str(root))
    return root, everything


def test_provenance_and_the_recorded_split(own_data_experiment):
    root, everything = own_data_experiment
    plan_md = (root / "plan.md").read_text()
    for name, rows in (("caps_chat.jsonl", 400), ("caps_train.csv", 320), ("caps_test.csv", 40)):
        digest = hashlib.sha256((root / "data" / name).read_bytes()).hexdigest()
        assert f"`{root / 'data' / name}` | {rows} | `{digest}`" in plan_md
    record = json.loads((root / "data" / "chat.split.json").read_text())
    idx = record["indices"]
    assert sorted(idx["train"] + idx["validation"] + idx["test"]) == list(range(400))
    assert (len(idx["train"]), len(idx["validation"]), len(idx["test"])) == (320, 40, 40)
    # The chat run was evaluated on exactly the recorded test rows (the .eval log's targets, in order).
    from inspect_ai.log import read_eval_log

    (log_path,) = (root / "runs" / "tiny" / "eval").glob("*/exact_match/*.eval")
    log = read_eval_log(str(log_path))
    targets = [s.target for s in sorted(log.samples, key=lambda s: s.id)]
    assert targets == [everything[i]["output"] for i in idx["test"]]


def test_scores_of_both_tasks_in_results_and_report(own_data_experiment):
    root, everything = own_data_experiment
    records = json.loads(_cli("results", str(root), "--json"))["runs"]
    by_name = {r["name"]: r for r in records}
    assert set(by_name) == {"tiny", "tiny_base"}  # one level of one factor: no suffix
    for r in by_name.values():  # both tasks scored on the run and on its control: the table's own test rows
        scored = {(e["task"], e["samples"]) for e in r["eval"]}
        assert scored == {("exact_match", 40), ("table_test", 40)}, (r["name"], scored)
    report = (root / "report" / "report.md").read_text()
    assert "table_test" in report and "exact_match" in report
    digest = hashlib.sha256((root / "data" / "caps_chat.jsonl").read_bytes()).hexdigest()
    assert digest in report  # provenance in the report too
