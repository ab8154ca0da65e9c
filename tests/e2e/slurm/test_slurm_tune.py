"""`tunelab tune` on the Slurm executor: each trial is a real sbatch job on the local cluster, followed through
sacct/squeue while its validation losses reach Optuna; the combination's run is scaffolded at the best trial's
rate. The same search as tests/e2e/test_tune_search.py (local), on the cluster the other Slurm tests share."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.fsutil import read_jsonl

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]
runner = CliRunner()

TRIALS = 2
TUNE = {"learning_rate": {"low": 1.0e-4, "high": 3.0e-2, "log": True}, "trials": TRIALS, "budget": 0.25,
        "compare_default": False}


def test_a_search_on_slurm_runs_each_trial_as_a_job_and_tunes_the_run(write_spec, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))
    spec = write_spec(factors={"lora_rank": [4]}, controls=False, tune=TUNE,
                      training={"validation_every_steps": 3, "logging_steps": 1},
                      resources={"executor": "slurm", "gpus_per_run": 0})
    exp = spec.parent
    res = runner.invoke(app, ["tune", str(exp)])
    assert res.exit_code == 0, res.output
    study = JournalStorage(JournalFileBackend(str(exp / "tune" / "journal.log")))
    [summary] = study.get_all_studies()
    trials = study.get_all_trials(summary._study_id)
    assert len(trials) == TRIALS and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    for t in trials:
        trial_dir = exp / "tune" / summary.study_name / f"trial-{t.number}"
        record = json.loads((trial_dir / "tune_job.json").read_text())
        assert record["executor"] == "slurm"
        # the job is Slurm's own: sacct knows it, and it ended (completed, or cancelled by the pruner)
        acct = subprocess.run(["sacct", "-n", "-X", "-P", "-j", record["job"], "-o", "State"],
                              capture_output=True, text=True, check=True).stdout.split()
        assert acct and acct[0].split()[0] in ("COMPLETED", "CANCELLED"), acct
        cfg = yaml.safe_load((trial_dir / "run.yaml").read_text())
        assert cfg["training"]["learning_rate"] == pytest.approx(t.params["learning_rate"])
        losses = [r["val_loss"] for r in read_jsonl(trial_dir / "metrics.jsonl") if r.get("val_loss") is not None]
        assert losses  # the job trained and validated on the cluster
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    best = min(done, key=lambda t: (t.value, t.number))
    (run_yaml,) = (exp / "runs").glob("*/run.yaml")  # compare_default off: the run alone, no twin
    run = yaml.safe_load(run_yaml.read_text())
    assert run["training"]["learning_rate"] == pytest.approx(best.params["learning_rate"])
    assert run["tuned"].startswith(f"tuned: best of {TRIALS} trials") and f"trial {best.number}" in run["tuned"]
