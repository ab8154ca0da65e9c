"""What a job's training loop adds to each step beyond a bare micro-batch, measured once per machine and kept.

A plan with nothing measured on a CPU times the run shape's bare micro-batches (forecast/cpuspeed.py); a real run
also pays, every optimizer step, for the HF/TRL Trainer's loop — collation, token counting, gradient clipping, the
scheduler, callbacks, the metrics.jsonl/status.json writes. That part is the loop's, not the shape's: it is measured
once per machine, thread count and library versions by a process of the job's own kind (train/loop_cost.py: a
reference tiny run trained by the job's trainer and callback, then its bare micro-batches timed on the same model),
cached (diskcache.py), and added per step. A measurement the machine's load disturbed is corrected by the slowdown
the load predicts and kept for cpuspeed.py's CONTENDED_KEEP_S only, as the shape's own timing is.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from tunelab.console import working
from tunelab.diskcache import cached_json, store_json, stored_json, this_environment
from tunelab.faults import TEST_KNOBS
from tunelab.forecast.cpuspeed import priced_counts, still_fresh, thread_words
from tunelab.host import threads as host_threads

LOOP_MODULE = "tunelab.train.loop_cost"  # the measuring job (a module name: nothing outside train/ imports it)
RESULT_FILE = "loop.json"  # what it writes in its directory (train/loop_cost.py RESULT_FILE)
TIMEOUT_S = 300.0
MEASURING = "measuring what the training loop adds to a step at {} thread(s), by a reference tiny run (kept for later plans)"


@dataclass(frozen=True)
class LoopOverhead:
    """Seconds the job's loop adds to each optimizer step (≥ 0), and in words what measured it."""

    step_s: float
    source: str
    imports_s: float | None = None  # the measuring job's own start-up: a fresh interpreter importing the stack


def loop_overhead(threads: int | None) -> LoopOverhead:
    """This machine's loop overhead per step (cached); 0 where the measuring job failed, and the source says why."""
    got = cached_json("train-loop", _key(threads), lambda: _measure_with_others(threads), keep=_worth_keeping)
    return overhead_of(got)


def _key(threads: int | None) -> list[Any]:
    return [socket.gethostname(), os.cpu_count(), threads, this_environment(), version("torch"),
            version("transformers"), version("trl"), version("peft")]


def _measure_with_others(threads: int | None) -> dict[str, Any]:
    """`threads`' measurement; the other counts priced together that no kept entry has are measured in the same
    process and kept under their own keys."""
    others = [n for n in dict.fromkeys(priced_counts())
              if n != threads and not _kept(stored_json("train-loop", _key(n)))]
    if not threads or not others:  # torch's own default, or one count: its own process, as ever
        with working(MEASURING, thread_words([threads])):
            return _measure(threads)
    with working(MEASURING, thread_words([threads, *others])):
        got = _measure_counts([threads, *others])
    for n in others:
        if _worth_keeping(got[n]):
            store_json("train-loop", _key(n), got[n])
    return got[threads]


def _kept(stored: Any) -> bool:
    return isinstance(stored, dict) and _worth_keeping(stored)


def _worth_keeping(measured: dict[str, Any]) -> bool:
    """A measurement that worked: an uncontended one for good, a contended one for CONTENDED_KEEP_S (and the plan)."""
    fresh = still_fresh(float(measured.get("timed_at") or 0))
    return bool(measured.get("ok")) and (not measured.get("contended") or fresh)


def overhead_of(measured: dict[str, Any]) -> LoopOverhead:
    """The overhead a measurement (train/loop_cost.py's loop.json) gives: the loop's step less the bare one."""
    if not measured.get("ok"):
        return LoopOverhead(0.0, f"+ the job's loop not priced (measuring it failed: {measured.get('error')})")
    loop_s, bare_s = float(measured["loop_step_s"]), float(measured["bare_step_s"])
    slowdown = float(measured.get("slowdown") or 1.0) if measured.get("contended") else 1.0
    step_s = max(0.0, loop_s - bare_s) / slowdown  # under contention: divided by it, as cpuspeed.py's own timing
    contended = (f" (timed under contention: divided by ×{slowdown:.1f}; measured again in minutes)"
                 if slowdown > 1 else "")
    return LoopOverhead(step_s, f"+ {step_s * 1e3:.1f} ms a step for the job's loop (Trainer, logging, metrics "
                                f"writes), timed here once on a reference tiny run: {loop_s * 1e3:.1f} ms a step "
                                f"in the loop against {bare_s * 1e3:.1f} ms bare{contended}",
                        measured.get("imports_s"))


def _measure(threads: int | None) -> dict[str, Any]:
    """Run the measuring job in a scratch directory and read what it wrote ({"ok": False, "error"} on failure)."""
    with tempfile.TemporaryDirectory(prefix="tunelab-loop-") as scratch:
        return _run_job(Path(scratch), threads, []) or _read(Path(scratch))


def _measure_counts(counts: list[int]) -> dict[int, dict[str, Any]]:
    """The measuring job at each thread count, one after the other in its one process (one start-up for all)."""
    with tempfile.TemporaryDirectory(prefix="tunelab-loop-") as scratch:
        failed = _run_job(Path(scratch), counts[0], counts)
        return {n: _read(Path(scratch) / f"threads-{n}", failed) for n in counts}


def _run_job(scratch: Path, threads: int | None, counts: list[int]) -> dict[str, Any] | None:
    """Run `python -m tunelab.train.loop_cost SCRATCH [COUNTS]`; None when it exited well, else the failure."""
    # the plan's own measurement, not a run: a test's knobs for the run's job (kills, held steps) stay off it
    env = {k: v for k, v in host_threads.child_env(1).items() if not k.startswith(TEST_KNOBS)}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    timeout = TIMEOUT_S * max(1, len(counts))
    try:
        proc = subprocess.run([sys.executable, "-m", LOOP_MODULE, str(scratch), *map(str, counts)],
                              capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"took over {timeout:.0f} s"}
    if proc.returncode == 0:
        return None
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    return {"ok": False, "error": lines[-1] if lines else f"exit {proc.returncode}"}


def _read(where: Path, failed: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the measuring job wrote in `where` (each count's file is written when that count's measurement ends;
    where none is, the job's failure)."""
    result = where / RESULT_FILE
    if not result.is_file():
        return failed or {"ok": False, "error": f"the measuring job wrote no {RESULT_FILE}"}
    return {"ok": True, **json.loads(result.read_text()), "timed_at": time.time()}
