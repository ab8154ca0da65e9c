"""Combinations searched side by side: a CPU trial spends about as long starting as training, and the studies of two
combinations are independent. So a search takes as many lanes as the executor gives the sweep's runs at once, each
searching one combination at a time on its share. Ctrl-C reaches the main thread, which stops every lane's job."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TypeVar

from tunelab.execute.executor import Executor
from tunelab.rundir.config import RunConfig
from tunelab.tune.combos import Combination
from tunelab.tune.trial import Lane

R = TypeVar("R")


def lanes(ex: Executor, runs: list[RunConfig], wanted: int) -> list[Lane]:
    """Up to `wanted` lanes, each a share the executor's capacity grants the sweep's runs side by side."""
    if ex.detached or wanted <= 1 or not runs:
        return [Lane()]
    room = ex.capacity(runs)
    stopping = threading.Event()
    out: list[Lane] = []
    for cfg in runs[:wanted]:
        env = room.take(cfg, len(out), len(out))
        if env is None:
            break
        out.append(Lane(env, stopping))
    return out if len(out) > 1 else [Lane()]


def side_by_side(combos: list[Combination], lanes_: list[Lane], work: Callable[[Combination, Lane], R],
                 done_with: Callable[[Combination, R], None]) -> None:
    """`work(combo, lane)` for every combination, as many at once as there are lanes; `done_with` each result as it
    comes, in this thread. Whatever stops it here (Ctrl-C, an error of a lane or of `done_with`) stops every lane."""
    if len(lanes_) == 1:  # one lane: in this thread, where Ctrl-C lands
        for combo in combos:
            done_with(combo, work(combo, lanes_[0]))
        return
    free: queue.SimpleQueue[Lane] = queue.SimpleQueue()
    for lane in lanes_:
        free.put(lane)

    def on_a_lane(combo: Combination) -> R:
        lane = free.get()
        try:
            return work(combo, lane)
        finally:
            free.put(lane)

    pool = ThreadPoolExecutor(max_workers=len(lanes_), thread_name_prefix="tune-lane")
    pending: dict[Future[R], Combination] = {pool.submit(on_a_lane, c): c for c in combos}
    try:
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                done_with(pending.pop(future), future.result())
    except BaseException:
        for lane in lanes_:
            lane.stopping.set()  # each lane stops its job (the trial's own Ctrl-C path) and ends
        for future in pending:
            future.cancel()
        raise
    finally:
        pool.shutdown(wait=True)
