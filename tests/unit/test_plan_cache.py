"""What a second `plan` may skip (diskcache.py, plan_cache.py): the same inputs give the same plan without
the slow checks, and any change to what a check reads — a data file, the spec — checks again. Plus the
terminal tables that stay short on a large sweep."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tunelab import diskcache
from tunelab.cli.main import SHOWN_ROWS, app
from tunelab.errors import TunelabError
from tunelab.plan.planner import make_plan


def test_cached_json_computes_once_per_key_and_recomputes_damaged_entries(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    calls = []

    def compute():
        calls.append(1)
        return {"n": len(calls)}

    assert diskcache.cached_json("k", ["a", 1], compute) == {"n": 1}
    assert diskcache.cached_json("k", ["a", 1], compute) == {"n": 1} and len(calls) == 1
    assert diskcache.cached_json("k", ["a", 2], compute) == {"n": 2}  # another key
    for entry in (tmp_path / "cache" / "k").glob("*.json"):
        entry.write_text("{half")  # a damaged entry is recomputed, not an error
    assert diskcache.cached_json("k", ["a", 1], compute) == {"n": 3}


def _rows(path):
    return json.loads(path.read_text())


def test_a_second_plan_skips_the_checks_but_a_changed_file_is_checked_again(write_spec, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "rows.json"
    rows = [{"input": w, "output": w.upper()} for w in ["ab", "cd", "ef", "gh", "ij", "kl", "mn", "op"]]
    data.write_text(json.dumps({"train": rows, "test": rows[:2]}))
    spec = write_spec(datasets=[{"name": "d", "path": str(data)}], factors={"lora_rank": [4]}, controls=False,
                      training={"max_seq_len": 64})
    first = make_plan(spec)
    kinds = {p.parent.name for p in (tmp_path / "cache").glob("*/*.json")}
    assert {"token-lengths", "verified-dataset", "eval-tasks-checked"} <= kinds
    again = make_plan(spec)
    assert again.truncation == first.truncation and again.datasets == first.datasets
    assert {k: v.steps for k, v in again.estimates.items()} == {k: v.steps for k, v in first.estimates.items()}

    # a broken row written into the same file: the verification runs again and fails
    data.write_text(json.dumps({"train": rows + [{"input": "x"}], "test": rows[:2]}))
    with pytest.raises(TunelabError, match="output"):
        make_plan(spec)
    # a long example: the token lengths are measured again (the cut is seen)
    long = {"input": " ".join(["word"] * 80), "output": "W"}
    data.write_text(json.dumps({"train": rows + [long], "test": rows[:2]}))
    cut = make_plan(spec).truncation
    (train,) = [t for runs in cut.values() for t in runs if t.split == "train"]
    assert (train.examples, train.cut) == (9, 1)


def test_large_sweeps_print_short_tables_and_all_rows_on_request(write_spec):
    spec = write_spec(factors={"lora_rank": list(range(1, SHOWN_ROWS + 11))}, controls=False)
    runner = CliRunner()
    res = runner.invoke(app, ["scaffold", str(spec)])
    assert res.exit_code == 0, res.output
    out = runner.invoke(app, ["status", str(spec.parent)], terminal_width=200).output
    assert f"{SHOWN_ROWS + 10} runs: {SHOWN_ROWS + 10} pending; 10 not listed (--all lists every run)" in out
    listed = runner.invoke(app, ["status", str(spec.parent), "--all"], terminal_width=200).output
    assert listed.count("│ tiny_r") == SHOWN_ROWS + 10 and out.count("│ tiny_r") == SHOWN_ROWS
    assert "not listed" not in listed
    plan = runner.invoke(app, ["plan", str(spec), "--no-md"], terminal_width=200).output
    assert "… and 10 more rows: plan.md (or `plan --json`) lists them all" in plan


def test_a_login_node_plans_for_the_gpu_named_in_the_spec_or_user_config(write_spec, tmp_path, monkeypatch):
    """No GPU here: plan, scaffold and validate use resources.gpu (spec, else the user config), --gpu wins."""
    runner = CliRunner()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # as on a login node, whatever this machine has

    def planned(spec, *flags):
        res = runner.invoke(app, ["plan", str(spec), "--json", *flags])
        assert res.exit_code == 0, res.output
        out = json.loads(res.stdout)
        return out["gpu"], next(iter(out["estimates"].values()))["gpu_memory_gib"]

    spec = write_spec(factors={"lora_rank": [4]}, controls=False, resources={"gpu": "A100-40GB"})
    assert planned(spec) == ("A100-40GB", 40.0)
    assert planned(spec, "--gpu", "H100")[0] == "H100-80GB"
    config = tmp_path / "user.yaml"
    config.write_text("gpu: H100\n")
    monkeypatch.setenv("TUNELAB_CONFIG", str(config))
    assert planned(spec)[0] == "A100-40GB"  # the spec wins over the user's file
    plain = write_spec(factors={"lora_rank": [4]}, controls=False)
    assert planned(plain)[0] == "H100-80GB"
    assert runner.invoke(app, ["scaffold", str(plain)]).exit_code == 0
    run_yaml = plain.parent / "runs" / "tiny_r4" / "run.yaml"
    assert "gpu: H100" in run_yaml.read_text()
    assert runner.invoke(app, ["validate", str(run_yaml)]).exit_code == 0  # no --gpu needed: run.yaml names it
    monkeypatch.delenv("TUNELAB_CONFIG")
    bad = write_spec(factors={"lora_rank": [4]}, controls=False, resources={"gpu": "GTX-9000"})
    res = runner.invoke(app, ["plan", str(bad)])
    assert res.exit_code != 0 and "resources.gpu" in res.output and "unknown GPU 'GTX-9000'" in res.output
