"""An experiment moved or copied between `tunelab scaffold` and `tunelab run --executor slurm` (issue 55): the job
scripts scaffold wrote name the old directory, and `tunelab run` writes them again for where the experiment is
before it submits, so training and evaluation jobs write into the new directory and nothing into the old one.
(The local executor: tests/e2e/test_moved_experiment_trains.py; submit_all.sh's refusal: tests/unit/test_moved_experiment.py.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.fsutil import read_json
from tunelab.ledger import store as ledger
from tunelab.scaffold.write import scaffold

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]
SLURM = {"executor": "slurm", "gpus_per_run": 0, "slurm": {"time_limit": "15", "submit_delay_s": 0.1,
                                                            "poll_interval_s": 1}}
TINY = {"factors": {"lora_rank": [4]}, "controls": False, "resources": SLURM, "eval": {"max_tokens": 8, "limit": 5},
        "training": {"epochs": 1, "max_steps": 4, "logging_steps": 1}}


def tree(root: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


def run_on_slurm(exp: Path, old: Path) -> None:
    """`tunelab run exp --wait`; then the run trained and was evaluated in exp, by jobs that ran there."""
    res = CliRunner().invoke(app, ["run", str(exp), "--wait"])
    assert res.exit_code == 0, res.output
    run = exp / "runs" / "tiny_r4"
    assert read_json(run / "status.json")["state"] == "completed" and (run / "summary.json").is_file()
    assert read_json(run / "eval" / "epoch_0" / "exact_match" / "scores.json")["samples"] == 5
    jobs = ledger.query(exp, "SELECT kind, job_id, failure FROM jobs ORDER BY id")
    assert [(j["kind"], j["failure"]) for j in jobs] == [("train", "completed"), ("eval", "completed")]
    for j in jobs:  # each job's log where the job ran: the new directory
        assert (run / f"slurm-{j['kind']}-{j['job_id']}.out").is_file()
    for script in ("job.sbatch", "eval.sbatch"):  # written again for here before submitting
        text = (run / script).read_text()
        assert f"--chdir={run}\n" in text and str(old) not in text.replace(str(exp), "")


def test_a_moved_experiment_runs_on_slurm_where_it_is_now(write_spec, tmp_path):
    old = scaffold(write_spec(**TINY)).experiment_dir
    assert f"--chdir={old}/runs/tiny_r4" in (old / "runs" / "tiny_r4" / "job.sbatch").read_text()
    new = tmp_path / "scratch" / "exp"
    new.parent.mkdir()
    shutil.move(old, new)
    run_on_slurm(new, old)
    assert not old.exists()


def test_a_copied_experiment_runs_on_slurm_in_the_copy_and_leaves_the_original_untouched(write_spec, tmp_path):
    original = scaffold(write_spec(**TINY)).experiment_dir
    copy = tmp_path / "exp-early"
    shutil.copytree(original, copy)
    before = tree(original)
    run_on_slurm(copy, original)
    assert tree(original) == before
