"""Resume: where this start of a run (or stage) begins, decided once, before anything trains.

A restarted job resumes from the newest complete trainer checkpoint of its stage; the main process first brings the run
directory back to that point, so nothing is counted twice: an unpublished epoch_N is published again, metrics.jsonl
keeps the rows up to the checkpoint's step, a stage starting afresh drops its epochs' orders, and a run starting afresh
drops every earlier result. The files are read once per job (train/context.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from tunelab.rundir import layout
from tunelab.rundir.checkpoints import (
    Counters,
    checkpoint_step,
    complete_trainer_checkpoints,
    epoch_dir,
    is_complete_checkpoint,
    last_complete_checkpoint,
    read_counters,
)
from tunelab.rundir.metrics import MetricRow, read_metrics, write_metrics
from tunelab.rundir.order import OrderRecord, read_orders, write_orders
from tunelab.train.checkpoints import checkpoint_at_epoch_end, epoch_index, publish_epoch_checkpoint
from tunelab.train.context import HeldFiles, StageContext
from tunelab.train.distributed import log

STALE_RESULTS = (layout.METRICS_FILE, layout.SUMMARY_FILE, layout.PACKING_FILE, layout.ORDER_FILE)


@dataclass(frozen=True)
class Resume:
    """What this start trains from; `metrics` and `orders` are the lists the job holds and appends to."""

    checkpoint: Path | None  # the trainer checkpoint to resume from; None: this stage's start
    counters: Counters  # the run's counters at that point (cumulative over stages and starts); training counts on in it
    metrics: list[MetricRow] = field(default_factory=list)
    orders: list[OrderRecord] = field(default_factory=list)
    restarts: int = 0  # resumes from a checkpoint over the whole run, this one included
    first_started_at: str | None = None  # the run's first start, if an earlier start recorded it

    @property
    def step(self) -> int:
        """The trainer step this stage resumes at (0: its start)."""
        return checkpoint_step(self.checkpoint) if self.checkpoint else 0


def resume(run_dir: Path, ctx: StageContext, main: bool, held: HeldFiles) -> Resume:
    """Decide where this start begins and (main process) bring the run directory back to it."""
    last = last_complete_checkpoint(ctx.state_dir(run_dir))
    counters = read_counters(last) if last else (replace(ctx.counters) if ctx.counters else Counters())
    if not main:  # the main process tidies the files; the others only need the counters
        return Resume(last, counters)
    before = held.status.status  # what the previous start (or stage) said
    restarts = (before.restarts or 0) + 1 if last else ((before.restarts or 0) if ctx.index else 0)
    if last is None and ctx.index == 0:
        for stale in STALE_RESULTS:
            (run_dir / stale).unlink(missing_ok=True)
        held.metrics, held.orders = [], []
        return Resume(None, counters, held.metrics, held.orders, restarts, before.first_started_at)
    if last is not None:
        for epoch in republish_missing_epochs(ctx.state_dir(run_dir), run_dir, upto=last,
                                              epoch_offset=ctx.epoch_offset):
            log(f"republished epoch_{epoch} from its trainer checkpoint")
    _rewind(run_dir, held, ctx.step_offset + (checkpoint_step(last) if last else 0),
            ctx.epoch_offset if last is None else None)
    assert held.metrics is not None and held.orders is not None
    return Resume(last, counters, held.metrics, held.orders, restarts, before.first_started_at)


def _rewind(run_dir: Path, held: HeldFiles, step: int, drop_orders_from: int | None) -> None:
    """Keep the metrics rows up to `step` and the orders before `drop_orders_from`, rewriting only what changes."""
    read = held.metrics is None
    rows = read_metrics(run_dir) if held.metrics is None else held.metrics
    held.metrics = [r for r in rows if (r.step or 0) <= step]
    if read or len(held.metrics) < len(rows):
        write_metrics(run_dir, held.metrics)
    orders = read_orders(run_dir) if held.orders is None else held.orders
    held.orders = [r for r in orders if drop_orders_from is None or r.epoch < drop_orders_from]
    if len(held.orders) < len(orders):
        write_orders(run_dir, held.orders)


def republish_missing_epochs(state_dir: str | Path, run_dir: str | Path, upto: Path, epoch_offset: int = 0
                             ) -> list[int]:
    """Publish missing epoch_N again from complete checkpoints up to `upto`; epoch_offset: earlier stages' epochs."""
    done = []
    for ckpt in complete_trainer_checkpoints(state_dir):
        if checkpoint_step(ckpt) > checkpoint_step(upto):
            break
        if not checkpoint_at_epoch_end(ckpt):
            continue  # a mid-epoch save (checkpoint_every, a stop signal) is no epoch's checkpoint
        epoch = epoch_offset + epoch_index(json.loads((ckpt / layout.TRAINER_STATE_FILE).read_text()).get("epoch"))
        if not is_complete_checkpoint(epoch_dir(run_dir, epoch)):
            publish_epoch_checkpoint(ckpt, run_dir, epoch)
            done.append(epoch)
    return done
