"""`tunelab run` on a spec with a `tune:` block (issue 55): which runs it is about to train at a rate no search chose
(tune/sweep.py `unsearched`), and its one-line refusals where no search can run first (a dry run) or the search
chose no rate — never a run trained at the spec's default rate as if tuned. The search `run` itself runs is
tests/e2e/test_tune_run.py's."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.fsutil import atomic_write_json
from tunelab.rundir.tuned import TunedRate, write_best
from tunelab.scaffold.write import scaffold
from tunelab.tune.sweep import unsearched

TUNE = {"learning_rate": {"low": 1e-4, "high": 1e-2}, "per": ["lora_rank"], "trials": 2, "budget": 0.5}
runner = CliRunner()


@pytest.fixture(autouse=True)
def _own_history(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))


@pytest.fixture
def spec(write_spec):
    path = write_spec(factors={"lora_rank": [4, 16]}, tune=TUNE)
    scaffold(path)
    return path


def test_the_runs_to_train_without_a_searched_rate_are_found_by_combination(spec):
    exp = spec.parent
    assert unsearched(exp) == {"lora_rank-4": ["tiny_r4"], "lora_rank-16": ["tiny_r16"]}  # twins, controls: never
    assert unsearched(exp, ["tiny_r16", "tiny_r16_lr-default", "tiny_base"]) == {"lora_rank-16": ["tiny_r16"]}
    atomic_write_json(exp / "runs" / "tiny_r4" / "status.json", {"run": "tiny_r4", "state": "completed"})
    assert unsearched(exp) == {"lora_rank-16": ["tiny_r16"]}  # trained already: `run` starts nothing there
    assert unsearched(exp, force=True) == {"lora_rank-4": ["tiny_r4"], "lora_rank-16": ["tiny_r16"]}


def test_runs_scaffolded_at_searched_rates_and_specs_without_tune_need_no_search(spec, write_spec):
    write_best(spec.parent, {f"lora_rank-{r}": TunedRate(combination=f"lora_rank-{r}", learning_rate=1e-3,
                                                         objective="val_loss", value=0.5, trial=0, trials=2)
                             for r in (4, 16)})
    scaffold(spec)
    assert unsearched(spec.parent) == {}
    plain = write_spec(factors={"lora_rank": [4]})
    scaffold(plain)
    assert unsearched(plain.parent) == {}


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def test_a_dry_run_cannot_search_and_refuses_in_one_line_naming_tunelab_tune(spec, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"  # the Slurm executor needs its commands on PATH; the refusal comes before any runs
    bin_dir.mkdir()
    for command in ("sbatch", "squeue", "scancel", "sacct"):
        (bin_dir / command).write_text("#!/bin/sh\necho never called >&2\nexit 1\n")
        (bin_dir / command).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    exp = spec.parent
    res = runner.invoke(app, ["run", str(exp), "--executor", "slurm", "--dry-run", "--no-checks"])
    assert res.exit_code == 1, res.output
    assert _error_lines(res.output) == [
        f"error: {spec}: tune: no learning-rate search has chosen the rate of tiny_r4, tiny_r16 yet, and a dry run "
        f"runs none: run `tunelab tune {spec}` first (a `tunelab run` without --dry-run searches first), rather "
        "than see them submitted at the spec's default rate"]
    assert "never called" not in res.output and not (exp / "tune").exists()


def test_a_search_that_chose_no_rate_refuses_rather_than_train_at_the_default(spec, monkeypatch):
    import tunelab.tune.search as search_module

    asked: list = []
    monkeypatch.setattr(search_module, "search", lambda *a, **kw: asked.append(kw["only"]) or {})
    exp = spec.parent
    res = runner.invoke(app, ["run", str(exp), "--no-checks"])
    assert res.exit_code == 1, res.output
    assert asked == [{"lora_rank-4", "lora_rank-16"}]
    assert ("the learning-rate search (tune:) has not chosen the rate of lora_rank-16, lora_rank-4: searching it "
            "first") in res.output
    tune = exp / "tune"
    assert _error_lines(res.output) == [
        f"error: {spec}: tune: the search of lora_rank-16, lora_rank-4 chose no rate: none of its trials completed "
        f"(pruned or failed: {tune / 'lora_rank-16'}/, {tune / 'lora_rank-4'}/), so its runs would train at the "
        f"spec's default rate; widen tune.learning_rate or run more trials (`tunelab tune {spec} --trials N`)"]
    assert not (exp / "runs" / "tiny_r4" / "status.json").exists()  # nothing trained
