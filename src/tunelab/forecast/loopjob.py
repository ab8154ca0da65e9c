"""The loop's measuring job as a process (train/loop_cost.py), started when the plan asks for it or started ahead.

A cold plan on a CPU pays a fresh interpreter importing the training stack for this job, seconds the plan's own
work (reading the spec, the tokenizer, the splits' lengths) leaves a core idle beside. So a plan that will measure
the loop (nothing kept for this machine) starts the job at its beginning with --ahead: it imports beside the plan
and waits. Before the plan times anything itself it waits for those imports to end (`settle`), so neither timing
shares the cores with them; when the plan asks, the job gets its thread counts on stdin and measures, as a job
started then would. The job's output goes to files in its scratch directory, never a pipe it could fill.

Where this process holds a warm process that imported the same stack (host/ahead.py `forker`: a search's, started
before its plan), no interpreter is started: the job is forked from that process when the plan asks, its start-up the
warm process's imports (train/warm.py), and one import of the stack fewer shares the cores with the plan's."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tunelab.faults import TEST_KNOBS
from tunelab.host import ahead
from tunelab.host import threads as host_threads

LOOP_MODULE = "tunelab.train.loop_cost"  # the measuring job (a module name: nothing outside train/ imports it)
RESULT_FILE = "loop.json"  # what it writes in its directory (train/loop_cost.py RESULT_FILE)
READY_FILE = "ready"  # --ahead: its imports ended (train/loop_cost.py READY_FILE)
AHEAD_FLAG = "--ahead"
TIMEOUT_S = 300.0
POLL_S = 0.05

Counts = list[int | None]  # [None]: torch's default threads; else each count, one after the other


@dataclass
class AheadJob:
    """A measuring job started ahead: its process, its scratch directory (output, ready, results), its log."""

    proc: subprocess.Popen[str]
    scratch: tempfile.TemporaryDirectory[str]
    log: IO[str]
    used: bool = False

    @property
    def where(self) -> Path:
        return Path(self.scratch.name)


_AHEAD: ContextVar[AheadJob | None] = ContextVar("loop_job_ahead", default=None)


def job_env(threads: int | None) -> dict[str, str]:
    """The job's environment: the thread rule's, a test's knobs for a run's job (kills, held steps) kept off it —
    the plan's own measurement, not a run —, and OMP_NUM_THREADS where a count was set."""
    env = {k: v for k, v in host_threads.child_env(1).items() if not k.startswith(TEST_KNOBS)}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


@contextmanager
def started_ahead(wanted: bool, command: list[str] | None = None) -> Iterator[None]:
    """While a plan is made: the measuring job started now where `wanted` (`command` replaces its argv before the
    scratch directory, for a test), stopped and its directory removed at the end, used or not."""
    if not wanted or (command is None and ahead.forker() is not None):  # none, or forked from the warm one: measure
        yield
        return
    scratch = tempfile.TemporaryDirectory(prefix="tunelab-loop-")
    log = open(Path(scratch.name) / "job.log", "w")  # noqa: SIM115 — closed with the job, below
    argv = [*(command or [sys.executable, "-m", LOOP_MODULE]), str(Path(scratch.name) / "out"), AHEAD_FLAG]
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, text=True,
                                env=job_env(None))
    except OSError:  # not started: the plan starts one when it needs it, and says why if that fails too
        log.close()
        scratch.cleanup()
        yield
        return
    token = _AHEAD.set(AheadJob(proc, scratch, log))
    try:
        yield
    finally:
        _AHEAD.reset(token)
        _stop(proc)
        log.close()
        scratch.cleanup()


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdin is not None:
        proc.stdin.close()


def settle(timeout_s: float = TIMEOUT_S) -> None:
    """Return once a job started ahead and not used yet is done importing (or has exited), and every other process
    importing ahead (host/ahead.py: the local executor's warm process) is ready: a timing the plan takes after this
    shares no core with those imports."""
    end = time.monotonic() + timeout_s
    job = _AHEAD.get()
    if job is not None and not job.used:
        ready = job.where / "out" / READY_FILE
        while not ready.exists() and job.proc.poll() is None and time.monotonic() < end:
            time.sleep(POLL_S)
    ahead.settle(max(0.0, end - time.monotonic()))


def imports_ahead() -> float | None:
    """The seconds the job started ahead took to import the training stack (its ready file says), a job's start-up
    before it loads anything; None where no such job is ready."""
    job = _AHEAD.get()
    if job is None:
        forker = ahead.forker()
        return forker.imports_s if forker is not None else None
    try:
        return float(json.loads((job.where / "out" / READY_FILE).read_text())["imports_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def measure(counts: Counts) -> dict[int | None, dict[str, Any]]:
    """What the job wrote for each count: the job started ahead where one waits, else one forked from a warm process
    where one is offered (each count a number: torch's default is a fresh interpreter's), else one started now; each
    measures once nothing else imports ahead (host/ahead.py)."""
    ahead.settle(TIMEOUT_S)
    job = _AHEAD.get()
    if job is not None and not job.used and job.proc.poll() is None:
        job.used = True
        return _measure_ahead(job, counts)
    forker = ahead.forker() if all(counts) else None
    with tempfile.TemporaryDirectory(prefix="tunelab-loop-") as scratch:
        forked = _measure_forked(forker, Path(scratch), counts) if forker is not None else None
        return forked if forked is not None else _measure_now(Path(scratch), counts)


def _measure_forked(forker: ahead.Forker, scratch: Path, counts: Counts) -> dict[int | None, dict[str, Any]] | None:
    """The job forked from `forker` in SCRATCH (as _measure_now lays it out); None where it could not run there."""
    numbered = [str(n) for n in counts if n]
    log = scratch / "job.log"
    code = forker.run_module(LOOP_MODULE, [str(scratch), *numbered], log, job_env(counts[0]),
                             TIMEOUT_S * len(numbered))
    if code is None:
        return None
    failed = None if code == 0 else _failure(log.read_text(errors="replace") if log.is_file() else "", code)
    return _results(scratch, counts, failed)


def _measure_now(scratch: Path, counts: Counts) -> dict[int | None, dict[str, Any]]:
    """`python -m tunelab.train.loop_cost SCRATCH [COUNTS]`: torch's default alone in SCRATCH, counts each in
    SCRATCH/threads-N, one start-up for all (the first count also its OMP_NUM_THREADS)."""
    numbered = [n for n in counts if n]
    timeout = TIMEOUT_S * max(1, len(numbered))
    argv = [sys.executable, "-m", LOOP_MODULE, str(scratch), *map(str, numbered)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=job_env(counts[0]), timeout=timeout)
        failed = None if proc.returncode == 0 else _failure(proc.stderr, proc.returncode)
    except subprocess.TimeoutExpired:
        failed = {"ok": False, "error": f"took over {timeout:.0f} s"}
    return _results(scratch, counts, failed)


def _measure_ahead(job: AheadJob, counts: Counts) -> dict[int | None, dict[str, Any]]:
    """Send the counts to the waiting job ("default" for torch's own) and wait for it to end measuring."""
    numbered = [n for n in counts if n]
    timeout = TIMEOUT_S * max(1, len(numbered)) + TIMEOUT_S  # + its imports, where they have not ended
    assert job.proc.stdin is not None
    try:
        job.proc.stdin.write((" ".join(map(str, numbered)) or "default") + "\n")
        job.proc.stdin.close()
        code = job.proc.wait(timeout=timeout)
        job.log.flush()
        failed = None if code == 0 else _failure((job.where / "job.log").read_text(errors="replace"), code)
    except subprocess.TimeoutExpired:
        failed = {"ok": False, "error": f"took over {timeout:.0f} s"}
    except (BrokenPipeError, OSError) as exc:  # it exited between the check and the write
        failed = {"ok": False, "error": f"the measuring job started ahead was gone: {exc}"}
    return _results(job.where / "out", counts, failed)


def _failure(output: str, code: int) -> dict[str, Any]:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return {"ok": False, "error": lines[-1] if lines else f"exit {code}"}


def _results(where: Path, counts: Counts, failed: dict[str, Any] | None) -> dict[int | None, dict[str, Any]]:
    """Each count's loop.json (written when that count's measurement ended); where none is, the job's failure."""
    out = {}
    for n in counts:
        result = (where / f"threads-{n}" if n else where) / RESULT_FILE
        out[n] = ({"ok": True, **json.loads(result.read_text()), "timed_at": time.time()} if result.is_file()
                  else failed or {"ok": False, "error": f"the measuring job wrote no {RESULT_FILE}"})
    return out
