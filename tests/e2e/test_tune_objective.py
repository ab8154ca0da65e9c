"""`tunelab tune` judged by an eval task's metric, on a machine where micro-batch 8 runs out of memory: trial 0's
first job fails out of memory (injected, tunelab/faults.py) and is retried at micro-batch 4 with twice the
accumulation, as the sweep's runs are, and trial 1 starts there; every trial that trains its whole budget is evaluated by a job of its own,
and the search chooses by the accuracy in those scores.json files (higher is better) — read back here from the
files, independently of the search's journal."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.faults import FAULT_OOM_ENV
from tunelab.fsutil import read_json, read_jsonl

pytestmark = pytest.mark.slow

TRIALS = 2
OBJECTIVE = "exact_match/accuracy"
TUNE = {"learning_rate": {"low": 1.0e-3, "high": 3.0e-2, "log": True}, "trials": TRIALS, "budget": 0.25,
        "objective": OBJECTIVE, "compare_default": False}
# 320 training rows in batches of 8: 40 steps a run, 10 a trial, validated at steps 3, 6, 9 and at its end
TRAINING = {"validation_every_steps": 3, "logging_steps": 1}


@pytest.fixture(scope="module")
def searched(tmp_path_factory, spec_in) -> tuple[Path, str]:
    """`tunelab tune` (in this process; its trials' training and evaluation jobs are processes of their own)."""
    spec = spec_in(tmp_path_factory.mktemp("tune-objective"), factors={"lora_rank": [4]}, controls=False,
                   training=TRAINING, tune=TUNE, eval={"max_tokens": 8, "limit": 24})
    with pytest.MonkeyPatch.context() as env:
        env.setenv(FAULT_OOM_ENV, "4")  # the jobs' micro-batches above 4 run out of memory
        done = CliRunner().invoke(app, ["tune", str(spec.parent)])
    assert done.exit_code == 0, done.output
    return spec.parent, done.output


def trial_dirs(exp: Path) -> list[Path]:
    return [exp / "tune" / "lora_rank-4" / f"trial-{n}" for n in range(TRIALS)]


def accuracy(run_dir: Path) -> float | None:
    """The trial's exact_match accuracy from its own scores.json (None: never evaluated)."""
    files = sorted(run_dir.glob("eval/epoch_*/exact_match/scores.json"))
    return read_json(files[-1])["metrics"]["accuracy"] if files else None


def last_val_loss(run_dir: Path) -> float:
    return [r["val_loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("val_loss") is not None][-1]


def test_an_out_of_memory_trial_is_retried_at_a_smaller_micro_batch_and_later_trials_start_there(searched):
    exp, out = searched
    first, second = trial_dirs(exp)  # trial 0 is never pruned: the first at every rung
    run = yaml.safe_load((first / "run.yaml").read_text())
    assert run["attempt"] == 2, out
    assert (run["training"]["batch_size"], run["training"]["gradient_accumulation_steps"]) == (4, 2)
    assert read_json(first / "status.json")["state"] == "completed"
    assert out.count("oom: batch_size 8->4, gradient_accumulation_steps 1->2") == 1, out
    run = yaml.safe_load((second / "run.yaml").read_text())  # started at the micro-batch trial 0 was healed to
    assert (run["attempt"], run["training"]["batch_size"], run["training"]["gradient_accumulation_steps"]) == (1, 4, 2)


def test_finished_trials_are_evaluated_and_the_best_accuracy_is_chosen(searched):
    exp, out = searched
    storage = JournalStorage(JournalFileBackend(str(exp / "tune" / "journal.log")))
    trials = optuna.load_study(study_name="lora_rank-4", storage=storage).get_trials()
    scored = {}
    for t, run_dir in zip(trials, trial_dirs(exp)):
        if t.state == TrialState.COMPLETE:
            scored[t.number] = accuracy(run_dir)
            assert scored[t.number] is not None, f"trial {t.number} completed without being evaluated:\n{out}"
            assert t.value == -scored[t.number]  # Optuna minimises: a higher-is-better metric is told negated
        else:
            assert t.state == TrialState.PRUNED and accuracy(run_dir) is None  # a pruned trial is not evaluated
    assert 0 in scored
    # the highest accuracy; on a tie (this tiny model's accuracies often are) the lower last validation loss
    best_number = min(scored, key=lambda n: (-scored[n], last_val_loss(trial_dirs(exp)[n]), n))
    best = read_json(exp / "tune" / "best.json")["lora_rank-4"]
    assert (best["objective"], best["trial"], best["value"]) == (OBJECTIVE, best_number, scored[best_number])
    rate = yaml.safe_load((trial_dirs(exp)[best_number] / "run.yaml").read_text())["training"]["learning_rate"]
    run = yaml.safe_load((exp / "runs" / "tiny_r4" / "run.yaml").read_text())
    assert run["training"]["learning_rate"] == rate
    assert run["tuned"].startswith(f"tuned: best of {TRIALS} trials, {OBJECTIVE} {scored[best_number]:.4g}")
    assert f"{OBJECTIVE.replace('/', ' ')} {scored[best_number]:.4g} at step 10" in out  # the trial's line


def test_the_report_shows_each_trials_accuracy(searched):
    exp, _ = searched
    done = CliRunner().invoke(app, ["report", str(exp)])
    assert done.exit_code == 0, done.output
    text = (exp / "report" / "report.md").read_text()
    tuning = text[text.index("## Tuning"):]
    header = next(line for line in tuning.splitlines() if line.startswith("| Combination | Trial |"))
    assert header.split("|")[7].strip() == "exact_match accuracy"
    for n, run_dir in enumerate(trial_dirs(exp)):
        value = accuracy(run_dir)
        row = next(line for line in tuning.splitlines() if line.startswith(f"| lora_rank-4 | {n} |"))
        assert row.split("|")[7].strip() == (f"{value:.4g}" if value is not None else "—")
