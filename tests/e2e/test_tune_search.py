"""`tunelab tune` for real: a learning-rate search on the tiny model through the local executor, killed with
SIGKILL mid-search and run again. Every trial trains (a real run of its own), the pruner stops some, the journal
and each trial's own files agree, and the sweep's run trains at the best trial's rate with its source."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from waiting import Feed, wait_for

from tunelab.fsutil import read_json, read_jsonl
from tunelab.train.loop_hooks import DEBUG_SEEN_ENV
from tunelab.tune.sweep import progress_lines

pytestmark = pytest.mark.slow

TRIALS = 3
TUNE = {"learning_rate": {"low": 1.0e-4, "high": 3.0e-2, "log": True}, "trials": TRIALS, "budget": 0.25}
# 320 training rows in batches of 8: 40 steps a run, 10 a trial, validated at steps 3, 6, 9 and at its end
TRAINING = {"validation_every_steps": 3, "logging_steps": 1}
ATTEMPT = "===== tunelab run:"


def tune(exp: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tunelab", "tune", str(exp), "--trials", str(TRIALS)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def searched(tmp_path_factory, spec_in) -> tuple[Path, dict]:
    """The search started, SIGKILLed once trial 0 has finished and trial 1 is training, then run to its end."""
    spec = spec_in(tmp_path_factory.mktemp("tune"), factors={"lora_rank": [4]}, controls=False, training=TRAINING,
                   tune=TUNE)
    exp = spec.parent
    first = tune(exp)
    trial0, trial1 = exp / "tune" / "lora_rank-4" / "trial-0", exp / "tune" / "lora_rank-4" / "trial-1"
    end = time.monotonic() + 240
    while not (trial1 / "tune_job.json").is_file() and first.poll() is None and time.monotonic() < end:
        time.sleep(0.2)
    assert first.poll() is None, first.communicate()[0]
    before = read_json(trial0 / "status.json")
    os.kill(first.pid, signal.SIGKILL)
    first.communicate(timeout=30)
    second = tune(exp)
    out = second.communicate(timeout=300)[0]
    assert second.returncode == 0, out
    return exp, {"trial0_status": before, "output": out}


def study_of(exp: Path) -> optuna.Study:
    storage = JournalStorage(JournalFileBackend(str(exp / "tune" / "journal.log")))
    return optuna.load_study(study_name="lora_rank-4", storage=storage)


def final_val_loss(run_dir: Path) -> float:
    """The last validation loss in the trial's own metrics.jsonl (independent of the journal)."""
    return [r["val_loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("val_loss") is not None][-1]


def test_the_search_trains_trials_and_the_run_takes_the_best_rate(searched):
    exp, _ = searched
    trials = study_of(exp).get_trials()
    assert [t.number for t in trials] == list(range(TRIALS))
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials), trials
    for t in trials:
        run_dir = exp / "tune" / "lora_rank-4" / f"trial-{t.number}"
        run = yaml.safe_load((run_dir / "run.yaml").read_text())
        assert run["training"]["learning_rate"] == t.params["learning_rate"]
        assert run["training"]["max_steps"] == 10 and run["directory"] == str(run_dir)
        if t.state == TrialState.COMPLETE:
            assert read_json(run_dir / "status.json")["state"] == "completed"
            assert t.value == final_val_loss(run_dir)
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    best = min(completed, key=lambda t: final_val_loss(exp / "tune" / "lora_rank-4" / f"trial-{t.number}"))
    (run_yaml,) = [p for p in (exp / "runs").glob("*/run.yaml") if not p.parent.name.endswith("_lr-default")]
    run = yaml.safe_load(run_yaml.read_text())
    assert run["training"]["learning_rate"] == best.params["learning_rate"]
    assert run["tuned"] == (f"tuned: best of {TRIALS} trials, val loss {best.value:.4g} at "
                            f"{best.params['learning_rate']:.3g}, trial {best.number}")
    assert read_json(exp / "tune" / "best.json")["lora_rank-4"]["trial"] == best.number
    pruned = sum(t.state == TrialState.PRUNED for t in trials)
    states = ", ".join(f"{n} {s}" for s, n in sorted({"completed": len(completed), "pruned": pruned}.items()) if n)
    line = f"lora_rank-4: {TRIALS}/{TRIALS} trials ({states}); {run['tuned']}"
    assert progress_lines(exp, TRIALS) == [line]
    shown = subprocess.run([sys.executable, "-m", "tunelab", "status", str(exp)], capture_output=True, text=True,
                           env=dict(os.environ, COLUMNS="400"), check=True).stdout
    assert f"tune {line}" in shown


def test_a_pruned_trial_stopped_cleanly_where_an_earlier_trial_was_better(searched):
    exp, _ = searched
    trials = study_of(exp).get_trials()
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, "the seeded search prunes at least one of its trials (their losses differ widely)"
    for t in pruned:
        run_dir = exp / "tune" / "lora_rank-4" / f"trial-{t.number}"
        mark = read_json(run_dir / "pruned.json")
        status = read_json(run_dir / "status.json")
        if mark["stopped"]:  # cancelled while it trained: the trainer saved and stopped (SIGTERM)
            assert status["state"] == "interrupted" and "SIGTERM" in status["error"] and status["step"] < 10
        else:  # its job had ended before the search read that validation: judged all the same
            assert status["state"] == "completed"
        rows = {r["step"]: r["val_loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("val_loss")}
        assert rows[mark["step"]] == mark["value"]
        earlier = [read_jsonl(exp / "tune" / "lora_rank-4" / f"trial-{e.number}" / "metrics.jsonl")
                   for e in trials if e.number < t.number]
        at_step = [r["val_loss"] for rows_ in earlier for r in rows_ if r.get("step") == mark["step"]
                   and r.get("val_loss") is not None]
        assert at_step and min(at_step) < mark["value"]  # successive halving: not the best third at its rung


def test_a_killed_search_resumes_without_repeating_finished_trials(searched):
    exp, seen = searched
    trial0 = exp / "tune" / "lora_rank-4" / "trial-0"
    assert seen["trial0_status"]["state"] == "completed"
    assert read_json(trial0 / "status.json")["finished_at"] == seen["trial0_status"]["finished_at"]
    assert (trial0 / "train.log").read_text().count(ATTEMPT) == 1  # trained once, never again
    assert len(study_of(exp).get_trials()) == TRIALS
    again = [line for line in seen["output"].splitlines() if line.startswith("lora_rank-4 trial ")]
    assert [line.split(" (")[0] for line in again] == ["lora_rank-4 trial 1", "lora_rank-4 trial 2"], again
    assert again[-1].startswith(f"lora_rank-4 trial 2 ({TRIALS}/{TRIALS})")


def test_each_search_forks_its_trials_from_one_warm_process_and_a_killed_ones_trial_trains_on(searched):
    """Trials 0 and 1 were started by the first search, trial 1 followed to its end by the second after the first
    was killed; trial 2 by the second search: each search's trials forked from its own warm process (train/warm.py)."""
    exp, _ = searched
    forked_from = {}
    for n in range(TRIALS):
        log = (exp / "tune" / "lora_rank-4" / f"trial-{n}" / "train.log").read_text()
        (line,) = [x for x in log.splitlines() if "started warm: forked from process" in x]  # one attempt each
        forked_from[n] = int(line.rsplit("process ", 1)[1].split()[0].rstrip(","))
    assert forked_from[0] == forked_from[1] != forked_from[2]
    trial1 = exp / "tune" / "lora_rank-4" / "trial-1"
    assert (trial1 / "train.log").read_text().count(ATTEMPT) == 1  # trained on through the kill, never restarted


def test_ctrl_c_stops_the_local_trial_cleanly_and_a_rerun_resumes_it(tmp_path, spec_in):
    # budget 1.0: the trial trains the run's 40 steps, so a page of held records (about 4) cannot reach its end
    spec = spec_in(tmp_path / "exp", factors={"lora_rank": [4]}, controls=False, training=TRAINING,
                   tune={**TUNE, "trials": 1, "budget": 1.0})
    exp = spec.parent
    trial0 = exp / "tune" / "lora_rank-4" / "trial-0"
    # the trial's job held within a page of records of the last one the test read (waiting.Feed): interrupted inside
    # its 40 steps whatever the machine's speed, with no clock involved (the rerun below trains unheld)
    seen = tmp_path / "seen"
    seen.mkdir()
    feed = Feed(seen / "seen.rank0.jsonl")
    # Ctrl-C as a terminal delivers it: a suite started in the background by a non-interactive shell (`make test &`)
    # hands its children SIGINT ignored, which Python then keeps; the search must see the default disposition
    first = subprocess.Popen([sys.executable, "-m", "tunelab", "tune", str(exp)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=dict(os.environ, **{DEBUG_SEEN_ENV: str(seen)}),
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert wait_for(lambda: feed.drain() >= 4 or first.poll() is not None, 240), "never reached step 4"
        assert first.poll() is None, first.communicate()[0]
        feed.drain()  # the last read before the signal: the trial cannot finish its 40 steps until the next
        assert feed.held_before(40), f"a page ({feed.size} bytes) holds the records up to step 40"
        first.send_signal(signal.SIGINT)
        # the job stays held until the search has passed the stop on (its handler says so at once): read freely
        # before that, it would train its 40 steps first on a machine busy enough to delay the search's thread
        log = trial0 / "train.log"
        assert wait_for(lambda: "SIGTERM received" in log.read_text(), 120), "the trial's job never got SIGTERM"
        assert feed.drain_until_exit(first, 120), "the search did not end after Ctrl-C"
    finally:
        if first.poll() is None:
            first.kill()
        feed.close()
    out = first.communicate()[0]
    assert first.returncode != 0, out
    status = read_json(trial0 / "status.json")
    job = read_json(trial0 / "tune_job.json")["job"]
    assert status["state"] == "interrupted" and "SIGTERM" in status["error"], status
    assert not Path(f"/proc/{job}").exists()  # the trial's job stopped with the search, not left training
    second = subprocess.run([sys.executable, "-m", "tunelab", "tune", str(exp)], capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    (trial,) = study_of(exp).get_trials()
    resumed = read_json(trial0 / "status.json")
    assert trial.state == TrialState.COMPLETE and resumed["state"] == "completed"
    assert resumed["resumed_from"] == status["last_checkpoint"].rsplit("/", 1)[-1]  # resumed, not started over
    assert trial.value == final_val_loss(trial0)
