"""The loop's measuring job started ahead of a plan's need (forecast/loopjob.py): a plan's own timing waits for its
imports to end, a job the plan never asked is stopped with the plan's scope, and the job reads its thread counts
from one line. The real job, asked for two counts, is test_first_contact.py's; here stand-in processes (a Python
line that plays the job's part of the protocol) make each case in well under a second."""

from __future__ import annotations

import contextlib
import contextvars
import io
import sys
import threading

import pytest

from tunelab.forecast import loopcost, loopjob
from tunelab.train import loop_cost


def stand_in(script: str) -> list[str]:
    """A job's argv before OUT_DIR --ahead: Python running `script`, which finds OUT_DIR in sys.argv[1]."""
    return [sys.executable, "-c", "import pathlib, sys, time\nout = pathlib.Path(sys.argv[1])\n" + script]


def test_settle_returns_once_the_job_wrote_ready_and_not_before(tmp_path):
    """The stand-in writes `ready` only once the test lets it (a file it waits for): settle, called before, has not
    returned while it waits, and returns once `ready` is there — no clock compared with another."""
    go = tmp_path / "go"
    script = (f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.01)\n"
              "out.mkdir(parents=True)\n(out / 'ready').write_text('')\ntime.sleep(60)")
    with loopjob.started_ahead(True, stand_in(script)):
        job = loopjob._AHEAD.get()
        assert job is not None
        ready = job.where / "out" / loopjob.READY_FILE
        settled = threading.Event()
        waiter = threading.Thread(target=contextvars.copy_context().run, args=(lambda: (loopjob.settle(),
                                                                                       settled.set()),))
        waiter.start()
        assert not settled.wait(0.5) and not ready.exists()  # still waiting: the job has not imported yet
        go.write_text("")
        assert settled.wait(30)
        waiter.join()
        assert ready.exists() and job.proc.poll() is None  # it waits for its counts, as the real one does
    assert job.proc.poll() is not None and not job.where.exists()  # stopped and its directory gone with the scope


def test_settle_returns_when_the_job_exits_without_ready():
    with loopjob.started_ahead(True, stand_in("time.sleep(0.2)\nsys.exit(3)")):
        job = loopjob._AHEAD.get()
        assert job is not None
        loopjob.settle(timeout_s=30)
        assert job.proc.returncode == 3 and not (job.where / "out" / loopjob.READY_FILE).exists()


def test_a_job_never_asked_is_stopped_with_the_plan():
    with loopjob.started_ahead(True, stand_in("time.sleep(120)")):
        job = loopjob._AHEAD.get()
        assert job is not None and job.proc.poll() is None
    assert job.proc.returncode is not None and job.proc.returncode < 0  # terminated, not left to run
    assert loopjob._AHEAD.get() is None


def test_nothing_starts_where_not_wanted():
    with loopjob.started_ahead(False):
        assert loopjob._AHEAD.get() is None


def test_a_plan_starts_it_only_on_a_cpu_with_nothing_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    started: list[bool] = []
    monkeypatch.setattr(loopjob, "started_ahead", lambda wanted: _record(started, wanted))  # what it was told only
    for cpu_plan in (False, True):
        with loopcost.ahead(cpu_plan):
            pass
    from tunelab.diskcache import store_json

    store_json("train-loop", loopcost._key(1), {"ok": True, "contended": False, "loop_step_s": 0.02,
                                                "bare_step_s": 0.019})  # one count measured, uncontended: kept
    with loopcost.ahead(True):
        pass
    assert started == [False, True, False]


def _record(started: list[bool], wanted: bool):
    started.append(wanted)
    return contextlib.nullcontext()


@pytest.mark.parametrize("line, counts", [("2 1\n", [2, 1]), ("default\n", []), ("\n", None), ("", None)])
def test_the_job_reads_its_counts_from_one_line(tmp_path, monkeypatch, line, counts):
    monkeypatch.setattr(sys, "stdin", io.StringIO(line))
    assert loop_cost._asked_counts(tmp_path / "out") == counts
    assert (tmp_path / "out" / loop_cost.READY_FILE).is_file()  # written before it waited


def test_a_line_that_is_not_counts_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("two\n"))
    with pytest.raises(ValueError, match="thread counts expected on stdin, got 'two'"):
        loop_cost._asked_counts(tmp_path / "out")


def test_a_job_that_cannot_start_leaves_the_plan_to_start_one_itself(tmp_path):
    with loopjob.started_ahead(True, [str(tmp_path / "no-such-python")]):
        assert loopjob._AHEAD.get() is None  # measure() starts the job then, as without a job ahead
