"""The Ray fault benchmark's check that a killed run, trained then evaluated by one Ray job per attempt, ends with its
training completed once and its evaluation run once (benchmarks/fault_checks.py): ledger rows and job logs made by
hand, as two kills and a completed resubmission leave them, then each way of losing or doubling one."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from fault_checks import check_one_job_each_attempt  # noqa: E402

ADDR = "@http://10.79.0.11:28265"
KILLED_1, KILLED_2, LAST = f"tl-run-aaa{ADDR}", f"tl-run-bbb{ADDR}", f"tl-run-ccc{ADDR}"
TRAINING = "[tunelab job] x\n[tunelab train] resumed at step 5\n"
KILLED_LOG = TRAINING  # killed mid-training: neither line below
LAST_LOG = (TRAINING + "[tunelab train] completed: 20 steps, final loss 0.1, checkpoints [10, 20]\n"
            "[tunelab job] 2026-11-28T00:00:00+00:00 Ray eval job on tl-rayf3\n")


def _rows(*pairs: tuple[str, str, str]) -> list[dict]:
    return [{"kind": kind, "job_id": jid, "failure": failure} for kind, jid, failure in pairs]


def _two_kills_then_done() -> list[dict]:
    return _rows(("train", KILLED_1, "node_fail"), ("eval", KILLED_1, "node_fail"),
                 ("train", KILLED_2, "node_fail"), ("eval", KILLED_2, "node_fail"),
                 ("train", LAST, "completed"), ("eval", LAST, "completed"))


def _logs(last: str = LAST_LOG, killed: str = KILLED_LOG) -> dict[str, str]:
    return {KILLED_1: killed, KILLED_2: killed, LAST: last}


def test_a_resumed_run_trained_and_evaluated_once_by_its_last_job_passes():
    assert check_one_job_each_attempt(_two_kills_then_done(), _logs()) == []


def test_an_evaluation_also_run_in_a_killed_job_is_doubled():
    problems = check_one_job_each_attempt(_two_kills_then_done(), _logs(killed=LAST_LOG))
    assert any("evaluation started in the logs of jobs" in p and KILLED_1 in p for p in problems)
    assert any("training completed in the logs of jobs" in p for p in problems)


def test_an_evaluation_never_started_is_lost():
    no_eval = LAST_LOG.split("[tunelab job] 2026")[0]
    problems = check_one_job_each_attempt(_two_kills_then_done(), _logs(last=no_eval))
    assert problems == [f"evaluation started in the logs of jobs [], not once in the last job's ['{LAST}']"]


def test_an_evaluation_as_a_job_of_its_own_is_not_one_job():
    separate = f"tl-eval-ddd{ADDR}"
    rows = _rows(("train", f"tl-train-eee{ADDR}", "completed"), ("eval", separate, "completed"))
    problems = check_one_job_each_attempt(rows, {f"tl-train-eee{ADDR}": LAST_LOG})
    assert any("is not one job for training and evaluation" in p for p in problems)
    assert any("evaluation rows of jobs" in p and separate in p for p in problems)


def test_a_killed_jobs_evaluation_row_that_completed_is_caught():
    rows = _two_kills_then_done()
    rows[1]["failure"] = "completed"
    problems = check_one_job_each_attempt(rows, _logs())
    assert problems == ["evaluation rows ended ['completed', 'node_fail', 'completed'], not the last one alone completed"]
