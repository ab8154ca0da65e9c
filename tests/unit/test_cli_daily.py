"""Daily-use CLI: --version, help on every option, clear refusals, and the commands typed between jobs
importing no heavy library (they must feel instant)."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import jsonschema
import pytest
import typer
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.errors import TunelabError
from tunelab.init.answers import InitAnswers, build_spec, parse_vary
from tunelab.init.discover import find_datasets, find_models

runner = CliRunner()
HEAVY = ("torch", "transformers", "datasets", "inspect_ai", "matplotlib", "mlflow", "wandb", "peft", "trl", "numpy",
         "questionary", "sklearn", "scipy")


def test_version():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"tunelab {version('tunelab')}"


def _commands(cmd, path=()):
    if hasattr(cmd, "commands"):
        for name, sub in cmd.commands.items():
            yield from _commands(sub, (*path, name))
    else:
        yield " ".join(path), cmd


def test_every_option_and_argument_has_help():
    missing = [f"{path} {p.name}" for path, cmd in _commands(typer.main.get_command(app)) for p in cmd.params
               if not getattr(p, "help", None)]
    assert missing == []


def test_results_refuses_json_and_csv_together(tmp_path):
    res = runner.invoke(app, ["results", str(tmp_path), "--json", "--csv"])
    assert res.exit_code == 1 and "choose one of --json and --csv" in res.output


@pytest.mark.slow
def test_prompt_commands_import_no_heavy_library(write_spec):
    """--help, status, results and cancel of a real scaffolded experiment, in one fresh interpreter (modules
    only accumulate, so none heavy after all four means none for each)."""
    from tunelab.scaffold.write import scaffold

    spec = write_spec()
    scaffold(spec)
    exp = str(spec.parent)
    code = ("import sys, json\nfrom tunelab.cli import app\n"
            f"for args in {[['--help'], ['status', exp], ['results', exp, '--json'], ['cancel', exp]]!r}:\n"
            "    try:\n        app(args, standalone_mode=False)\n    except SystemExit:\n        pass\n"
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
    assert '"name": "tiny_r4"' in out.stdout  # results really ran


def test_export_without_mlflow_names_the_extra(tmp_path):
    code = ("import sys\nsys.modules['mlflow'] = None  # as if not installed\nfrom tunelab.cli import app\n"
            f"app(['export', {str(tmp_path)!r}, '--to', 'mlflow'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "pip install 'tunelab[mlflow]'" in out.stderr and "Traceback" not in out.stderr


def test_export_without_wandb_names_the_extra(tmp_path):
    code = ("import sys\nsys.modules['wandb'] = None  # as if not installed\nfrom tunelab.cli import app\n"
            f"app(['export', {str(tmp_path)!r}, '--to', 'wandb'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "pip install 'tunelab[wandb]'" in out.stderr and "Traceback" not in out.stderr


def test_parse_vary():
    assert parse_vary(["lora_rank=4,16", "learning_rate=1e-4, 2e-4", "packing=true,false"]) == {
        "lora_rank": [4, 16], "learning_rate": [1e-4, 2e-4], "packing": [True, False]}
    for bad in ("lora_rank", "=4", "lora_rank=", "model=a,b"):
        with pytest.raises(TunelabError):
            parse_vary([bad])


def test_build_spec_names_are_unique_slugs(tmp_path):
    a, b = tmp_path / "x" / "Llama 3.2 1B", tmp_path / "y" / "Llama 3.2 1B"
    spec = build_spec(InitAnswers(name="my exp", models=[a, b], datasets=[tmp_path / "caps.json"], validation=False))
    assert spec["name"] == "my-exp"
    assert [m["name"] for m in spec["models"]] == ["Llama-3.2-1B", "Llama-3.2-1B-2"]
    assert spec["datasets"] == [{"name": "caps", "path": str((tmp_path / "caps.json").resolve())}]
    assert "validation_every_steps" not in spec["training"]


def test_discovery_finds_model_dirs_and_data_files(tmp_path):
    def model(path: Path) -> Path:
        path.mkdir(parents=True)
        (path / "config.json").write_text("{}")
        (path / "model.safetensors").write_bytes(b"x")
        return path

    one, two = model(tmp_path / "models" / "a"), model(tmp_path / "models" / "org" / "b")
    model(one / "checkpoint-1")  # inside a model: not another model
    (tmp_path / "models" / "empty").mkdir()
    assert find_models([tmp_path / "models"]) == [one, two]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "rows.jsonl").write_text("{}\n")
    (tmp_path / "runs" / "r1").mkdir(parents=True)
    (tmp_path / "runs" / "r1" / "metrics.jsonl").write_text("{}\n")  # experiment output, not data
    found = find_datasets(tmp_path)
    assert (tmp_path / "data" / "rows.jsonl").resolve() in found
    assert not any("runs" in p.parts or "models" in p.parts for p in found)


@pytest.mark.slow
def test_compare_shows_exactly_the_config_that_differs(write_spec, tmp_path):
    from tunelab.scaffold.write import scaffold

    scaffold(write_spec(factors={"lora_rank": [4]}), tmp_path / "a")
    scaffold(write_spec(factors={"lora_rank": [4]}, training={"learning_rate": 0.001}), tmp_path / "b")
    res = runner.invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b" / "runs" / "tiny_r4"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert [r["run"] for r in out["runs"]] == ["a/tiny_r4", "a/tiny_base", "b/tiny_r4"]
    assert out["differing"] == ["training.learning_rate"]  # the control has no training: not a difference
    assert [r["differences"] for r in out["runs"]] == [{"training.learning_rate": "0.002"},
                                                      {"training.learning_rate": "—"},
                                                      {"training.learning_rate": "0.001"}]
    assert all(r["state"] == "pending" and r["final_loss"] is None for r in out["runs"])
    one = runner.invoke(app, ["compare", str(tmp_path / "a" / "runs" / "tiny_r4")])
    assert one.exit_code == 1 and "at least two" in one.output


def test_run_executor_is_a_choice_and_slurm_only_options_are_refused_locally(tmp_path):
    bad = runner.invoke(app, ["run", str(tmp_path), "--executor", "kubernetes"])
    assert bad.exit_code == 2 and "local" in bad.output and "slurm" in bad.output
    for flag in ("--dry-run", "--wait"):
        res = runner.invoke(app, ["run", str(tmp_path), "--executor", "local", flag])
        assert res.exit_code == 1 and f"{flag}: --dry-run and --wait apply to the slurm or ray executor only" in res.output


def test_estimate_measures_the_spec_s_prompt_format_dtype_and_modules(tiny_model, caps_dataset):
    """Each option reaches the estimate: chat template tokens counted, fp32 and full modules cost memory."""
    def est(*extra: str) -> dict:
        res = runner.invoke(app, ["estimate", "--model", str(tiny_model), "--gpu", "H100-80GB", "--max-seq-len", "128",
                                  "--batch-size", "8", "--json", *extra])
        assert res.exit_code == 0, res.output
        out = json.loads(res.stdout)
        jsonschema.validate(out, schema)  # what `schema --output estimate` documents
        return out

    schema = json.loads(runner.invoke(app, ["schema", "--output", "estimate"]).stdout)
    data = ["--dataset", str(caps_dataset), "--prompt", "Capitalize: {input}"]
    assert est(*data, "--chat-template", "always")["tokens_per_epoch"] > est(*data, "--chat-template", "never")[
        "tokens_per_epoch"]
    assert est("--dtype", "float32")["peak_allocated_bytes"] > est("--dtype", "bfloat16")["peak_allocated_bytes"]
    plain, full_head = est(), est("--modules-to-save", "lm_head")
    assert full_head["peak_allocated_bytes"] > plain["peak_allocated_bytes"]
    assert plain["memory_source"] == full_head["memory_source"] == "simulated: tunelab's training step"
    bad = runner.invoke(app, ["estimate", "--model", str(tiny_model), "--gpu", "H100-80GB", "--max-seq-len", "128",
                              "--dtype", "fp8"])
    assert bad.exit_code == 1 and "--dtype" in bad.output


def test_watching_a_sweep_nobody_started_ends_at_once_and_says_how_to_start_it(write_spec):
    """All runs pending and no job behind any of them: nothing will change, so --watch does not wait forever."""
    import io

    from rich.console import Console

    from tunelab.execute.jobs import JobRow, RunJobs
    from tunelab.execute.status import status_row, status_rows
    from tunelab.execute.watch import watch
    from tunelab.scaffold.write import scaffold

    plan = scaffold(write_spec(factors={"lora_rank": [4]}))
    exp = plan.experiment_dir
    out = io.StringIO()
    rows = watch(exp, lambda: status_rows(exp), Console(file=out, width=200), interval_s=60)
    assert {r.state for r in rows} == {"pending"} and "`tunelab run" in out.getvalue()

    def job(kind: str, state: str) -> JobRow:
        return JobRow(1, "tiny_r4", kind, "17", 1, "slurm", "2026-01-01T00:00:00+00:00", state, "2026-01-01T00:00:00+00:00")

    cfg = plan.runs[0]
    queued = status_row(cfg, RunJobs(train=job("train", "PENDING")))
    assert queued.state == "pending" and queued.active  # queued: watching it makes sense
    assert not status_row(cfg).active  # pending, no job behind it
    done = job("train", "COMPLETED")
    assert status_row(cfg, RunJobs(train=done, eval=job("eval", "PENDING"))).active  # its evaluation is queued
