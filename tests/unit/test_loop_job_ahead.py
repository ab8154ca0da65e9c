"""The loop's measuring job started ahead of a plan's need (forecast/loopjob.py): a plan's own timing waits for its
imports to end, a job the plan never asked is stopped with the plan's scope, and the job reads its thread counts
from one line. The real job, asked for two counts, is test_first_contact.py's; here stand-in processes (a Python
line that plays the job's part of the protocol) make each case in well under a second."""

from __future__ import annotations

import contextlib
import contextvars
import io
import json
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
    assert loop_cost._asked_counts(tmp_path / "out", 2.5) == counts
    ready = tmp_path / "out" / loop_cost.READY_FILE  # written before it waited, with its imports' seconds
    assert json.loads(ready.read_text()) == {"imports_s": 2.5}


def test_a_line_that_is_not_counts_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("two\n"))
    with pytest.raises(ValueError, match="thread counts expected on stdin, got 'two'"):
        loop_cost._asked_counts(tmp_path / "out", 2.5)


def test_a_job_that_cannot_start_leaves_the_plan_to_start_one_itself(tmp_path):
    with loopjob.started_ahead(True, [str(tmp_path / "no-such-python")]):
        assert loopjob._AHEAD.get() is None  # measure() starts the job then, as without a job ahead


READY_WITH_IMPORTS = ("out.mkdir(parents=True)\n(out / 'ready').write_text('{\"imports_s\": 3.25}')\n"
                      "sys.stdin.readline()\n(out / 'asked').write_text('')\ntime.sleep(60)")


def test_a_step_of_seconds_is_priced_without_measuring_the_loop(tmp_path, monkeypatch):
    """A run whose step is long enough that even LOOP_BOUND_S is under UNSEEN_SHARE of it: the waiting job is never
    asked (it records a request in `asked`; the measuring function would fail the test), the loop priced at 0 and
    said not measured, with the start-up's imports the job wrote in its ready file."""
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(loopcost, "loop_overhead", lambda threads: pytest.fail("the loop was measured"))
    step_s = loopcost.LOOP_BOUND_S / loopcost.UNSEEN_SHARE  # the shortest step it holds for
    with loopjob.started_ahead(True, stand_in(READY_WITH_IMPORTS)):
        job = loopjob._AHEAD.get()
        assert job is not None
        loopjob.settle(timeout_s=30)
        got = loopcost.loop_for(2, step_s)
        assert not job.used and not (job.where / "out" / "asked").exists()
    assert got.step_s == 0.0 and got.imports_s == 3.25
    assert got.source == (f"+ the job's loop not measured: at most ~20 ms a step (assumed), under 2% of this run's "
                          f"{step_s:.2f} s step")


def test_a_short_step_or_a_kept_measurement_is_priced_from_the_loop(tmp_path, monkeypatch):
    """A step under that bound's reach gets the measured loop (the measuring function, here a stand-in that says which
    count it was asked for); a long step on a machine that kept a measurement gets the kept one, not none."""
    from tunelab.diskcache import store_json

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(loopcost, "loop_overhead", lambda threads: loopcost.LoopOverhead(0.004, f"measured {threads}"))
    short = loopcost.LOOP_BOUND_S / loopcost.UNSEEN_SHARE * 0.99
    assert loopcost.loop_for(1, short).source == "measured 1"
    store_json("train-loop", loopcost._key(2), {"ok": True, "contended": False, "loop_step_s": 0.02,
                                                "bare_step_s": 0.019})
    assert loopcost.loop_for(2, 60.0).source == "measured 2"  # kept: read through loop_overhead, as before
    assert loopcost.loop_for(1, 60.0).step_s == 0.0  # nothing kept for 1 thread: not measured
