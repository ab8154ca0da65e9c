"""What a job's training loop adds to each step beyond a bare micro-batch, measured once per machine and kept.

A plan with nothing measured on a CPU times the run shape's bare micro-batches (forecast/cpuspeed.py); a real run
also pays, every optimizer step, for the HF/TRL Trainer's loop — collation, token counting, gradient clipping, the
scheduler, callbacks, the metrics.jsonl/status.json writes. That part is the loop's, not the shape's: it is measured
once per machine, thread count and library versions by a process of the job's own kind (train/loop_cost.py: a
reference tiny run trained by the job's trainer and callback, then its bare micro-batches timed on the same model),
cached (diskcache.py), and added per step. A plan on a CPU with nothing kept starts that process as it begins
(`ahead`, forecast/loopjob.py), so its imports run beside the plan's reading of the data rather than after it. A measurement the machine's load disturbed is corrected by the slowdown
the load predicts and kept for cpuspeed.py's CONTENDED_KEEP_S only, as the shape's own timing is.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

from tunelab.console import working
from tunelab.diskcache import cached_json, store_json, stored_json, this_environment
from tunelab.forecast import loopjob
from tunelab.forecast.cpuspeed import thread_words
from tunelab.forecast.planscope import priced_counts, still_fresh
from tunelab.host.machine import machine_key

LOOP_BOUND_S = 0.02  # the most the job's loop adds to a step on a CPU, assumed: ~4x the 5.2 ms measured here
UNSEEN_SHARE = 0.02  # a loop at LOOP_BOUND_S under this share of a step hides in the step timing's own spread
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


def loop_for(threads: int | None, step_s: float) -> LoopOverhead:
    """The loop's overhead for a run whose optimizer step takes `step_s` at `threads`: the kept measurement where there
    is one; else, where even LOOP_BOUND_S would be under UNSEEN_SHARE of the step (a large model's step of seconds:
    the loop is not what its time hangs on), none, said so, its start-up's imports those the job started ahead took
    (no job spends seconds measuring what a timing's spread hides); else measured (loop_overhead)."""
    if not _kept(stored_json("train-loop", _key(threads))) and LOOP_BOUND_S <= UNSEEN_SHARE * step_s:
        return LoopOverhead(0.0, f"+ the job's loop not measured: at most ~{LOOP_BOUND_S * 1e3:.0f} ms a step "
                                 f"(assumed), under {UNSEEN_SHARE:.0%} of this run's {step_s:.2f} s step",
                            loopjob.imports_ahead())
    return loop_overhead(threads)


@contextmanager
def ahead(cpu_plan: bool) -> Iterator[None]:
    """A plan's scope: where it runs on a CPU and nothing is kept for this machine at any of its thread counts, the
    measuring job started now, importing beside the plan's own work (forecast/loopjob.py); else nothing."""
    counts: list[int | None] = [None, *range(1, (os.cpu_count() or 1) + 1)]
    wanted = cpu_plan and not any(_kept(stored_json("train-loop", _key(n))) for n in counts)
    with loopjob.started_ahead(wanted):
        yield


def _key(threads: int | None) -> list[Any]:
    return [*machine_key(), threads, this_environment(), version("torch"),
            version("transformers"), version("trl"), version("peft")]


def _measure_with_others(threads: int | None) -> dict[str, Any]:
    """`threads`' measurement; the other counts priced together that no kept entry has are measured in the same
    process and kept under their own keys."""
    others = [n for n in dict.fromkeys(priced_counts())
              if threads and n != threads and not _kept(stored_json("train-loop", _key(n)))]
    with working(MEASURING, thread_words([threads, *others])):
        got = loopjob.measure([threads, *others])
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
