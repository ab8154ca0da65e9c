"""What a job's training loop adds to each step beyond a bare micro-batch, measured once per machine and kept.

A plan with nothing measured on a CPU times the run shape's bare micro-batches (estimate/cpuspeed.py); a real run
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
from pathlib import Path
from typing import Any

from tunelab.diskcache import cached_json, this_environment
from tunelab.estimate.cpuspeed import CONTENDED_KEEP_S
from tunelab.faults import TEST_KNOBS

LOOP_MODULE = "tunelab.train.loop_cost"  # the measuring job (a module name: nothing outside train/ imports it)
RESULT_FILE = "loop.json"  # what it writes in its directory (train/loop_cost.py RESULT_FILE)
TIMEOUT_S = 300.0


@dataclass(frozen=True)
class LoopOverhead:
    """Seconds the job's loop adds to each optimizer step (≥ 0), and in words what measured it."""

    step_s: float
    source: str
    imports_s: float | None = None  # the measuring job's own start-up: a fresh interpreter importing the stack


def loop_overhead(threads: int | None) -> LoopOverhead:
    """This machine's loop overhead per step (cached); 0 where the measuring job failed, and the source says why."""
    from importlib.metadata import version

    key = [socket.gethostname(), os.cpu_count(), threads, this_environment(), version("torch"), version("transformers"),
           version("trl"), version("peft")]
    got = cached_json("train-loop", key, lambda: _measure(threads), keep=_worth_keeping)
    return overhead_of(got)


def _worth_keeping(measured: dict[str, Any]) -> bool:
    """A measurement that worked: an uncontended one for good, a contended one for CONTENDED_KEEP_S."""
    fresh = time.time() - float(measured.get("timed_at") or 0) < CONTENDED_KEEP_S
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
    from tunelab.host import threads as host_threads

    # the plan's own measurement, not a run: a test's knobs for the run's job (kills, held steps) stay off it
    env = {k: v for k, v in host_threads.child_env(1).items() if not k.startswith(TEST_KNOBS)}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory(prefix="tunelab-loop-") as scratch:
        try:
            proc = subprocess.run([sys.executable, "-m", LOOP_MODULE, scratch], capture_output=True, text=True,
                                  env=env, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": f"took over {TIMEOUT_S:.0f} s"}
        result = Path(scratch) / RESULT_FILE
        if proc.returncode != 0 or not result.is_file():
            lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
            return {"ok": False, "error": lines[-1] if lines else f"exit {proc.returncode}"}
        return {"ok": True, **json.loads(result.read_text()), "timed_at": time.time()}
