"""What tunelab adds to TRL's training loop: a trainer that counts every micro-batch's tokens and times its
evaluations and saves, and a callback that writes metrics.jsonl, status.json and the epoch_N checkpoints.
Kept apart from runner.py (which builds the trainer and drives a run) so each stays readable."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from tunelab.faults import kill_point, pace_step
from tunelab.fsutil import space_guard
from tunelab.rundir.checkpoints import Counters, last_complete_checkpoint, write_counters
from tunelab.rundir.status import StatusWriter
from tunelab.train.checkpoints import (
    at_epoch_end,
    directory_bytes,
    epoch_index,
    prune_trainer_checkpoints,
    publish_epoch_checkpoint,
)
from tunelab.train.console import log
from tunelab.train.context import StageContext
from tunelab.train.distributed import barrier, world
from tunelab.train.metrics import LocalCounts, MetricsWriter, count_batch, process_age_s, sync_counters

# Debug/test knob: a directory where every process appends the token ids of each micro-batch it trained on
# (seen.rank<R>.jsonl), so a test can prove each example is seen once per epoch across all processes.
DEBUG_SEEN_ENV = "TUNELAB_DEBUG_SEEN_DIR"


def record_seen(step: int, inputs: dict[str, Any]) -> None:
    """Append this process's micro-batch (non-padding token ids per row) to the debug file, if asked."""
    where = os.environ.get(DEBUG_SEEN_ENV)
    if not where:
        return
    ids, mask = inputs["input_ids"], inputs.get("attention_mask")
    rows = [[int(t) for t, m in zip(r, mr) if m] for r, mr in zip(ids.tolist(), mask.tolist())] if mask is not None \
        else ids.tolist()
    w = world()
    with open(Path(where) / f"seen.rank{w.rank}.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"step": step, "rank": w.rank, "pid": os.getpid(), "rows": rows}) + "\n")


def make_trainer_class():
    from trl import SFTTrainer

    from tunelab.train.feeding import FeedingMixin
    from tunelab.train.losses import PlainLossMixin
    from tunelab.train.sharding import ShardingMixin
    from tunelab.train.step_flops import CountedFlopsMixin

    class CountingSFTTrainer(FeedingMixin, PlainLossMixin, ShardingMixin, CountedFlopsMixin, SFTTrainer):
        """Counts every micro-batch's tokens and times evaluations and saves; saves and resumes a sharded model; takes
        the model's own loss where losses.py says; counts a step's FLOPs without walking the parameters."""

        counters: Counters
        local: LocalCounts

        def training_step(self, model, inputs, num_items_in_batch=None):
            started = time.monotonic()
            self.local.add(*count_batch(inputs))
            record_seen(self.state.global_step + 1, inputs)
            loss = super().training_step(model, inputs, num_items_in_batch)
            kill_point("train.step", str(self.state.global_step + 1))  # backward done, optimizer step not
            pace_step(started)
            return loss

        def _save_optimizer_and_scheduler(self, output_dir):
            kill_point("train.save", str(self.state.global_step))  # mid-save: adapter written, trainer state not
            super()._save_optimizer_and_scheduler(output_dir)

        def _save_checkpoint(self, model, trial):
            t0 = time.monotonic()
            with space_guard(self.checkpoint_path(), self.checkpoint_bytes()):  # a full disk: one NoSpaceError
                super()._save_checkpoint(model, trial)
            self.counters.add_save(time.monotonic() - t0)

        def checkpoint_path(self) -> Path:
            return Path(str(self.args.output_dir)) / f"checkpoint-{self.state.global_step}"

        def checkpoint_bytes(self) -> int:
            """What a save writes, about: the newest checkpoint's size, else trainable weights and Adam moments."""
            last = last_complete_checkpoint(str(self.args.output_dir))
            if last is not None:
                return directory_bytes(last)
            params = self.model.parameters() if self.model is not None else []
            return 3 * sum(int(p.numel()) * int(p.element_size()) for p in params if p.requires_grad)

        def evaluate(self, *args, **kwargs):
            t0 = time.monotonic()
            try:
                return super().evaluate(*args, **kwargs)
            finally:
                self.counters.overhead_s += time.monotonic() - t0

    return CountingSFTTrainer


def make_callback(run_dir: Path, writer: MetricsWriter, status: StatusWriter, startup: dict, local: LocalCounts,
                   keep: int | None = None, ctx: StageContext | None = None):
    from transformers import TrainerCallback

    main = world().is_main
    stage = ctx or StageContext()
    steps, epochs = stage.step_offset, stage.epoch_offset  # a staged run counts on from its earlier stages

    class TunelabCallback(TrainerCallback):
        """metrics.jsonl per log, status.json progress, epoch_N adapter checkpoints. Called on every process
        at the same steps: counters are summed over processes there, and only the main process writes."""

        def on_train_begin(self, args, state, control, **kwargs):
            if "startup_s" not in startup:
                startup["startup_s"] = process_age_s()
            if stage.init_optimizer is not None and state.global_step == 0:  # optimizer: carried, not a resume
                load_optimizer_state(kwargs["optimizer"], stage.init_optimizer, kwargs["model"])
                log(f"optimizer state carried from {stage.init_optimizer.relative_to(run_dir)}")

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" not in logs and "eval_loss" not in logs:
                return
            peak = sync_counters(writer.counters, local)
            if not main:
                return
            row = writer.write(steps + state.global_step, epochs + (state.epoch or 0.0), logs, peak)
            status.write(step=steps + state.global_step, epoch=row.epoch, total_steps=steps + state.max_steps)
            what = f"val_loss {row.val_loss:.4f}" if row.val_loss is not None else (
                f"loss {row.loss:.4f} tok/s {row.tokens_per_s or 0:.0f}"
            )
            log(f"step {steps + state.global_step}/{steps + state.max_steps} epoch {row.epoch or 0.0:.2f} {what}")

        def on_save(self, args, state, control, **kwargs):
            """Publish epoch_N, then write the counters completing the checkpoint (all processes saved first)."""
            sync_counters(writer.counters, local)
            barrier()
            if not main:
                return
            t0 = time.monotonic()
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            kill_point("train.publish", str(state.global_step))  # trainer state saved; epoch_N, counters not
            dest = ckpt  # a mid-epoch save (checkpoint_every, a stop signal) publishes no epoch_N
            if at_epoch_end(state.epoch, state.global_step, state.max_steps):
                dest = publish_epoch_checkpoint(ckpt, run_dir, epochs + epoch_index(state.epoch))
            status.write(last_checkpoint=str(dest.relative_to(run_dir)), step=steps + state.global_step)
            writer.counters.add_save(time.monotonic() - t0, saves=0)  # the publish is part of the save
            write_counters(ckpt, writer.snapshot())
            prune_trainer_checkpoints(args.output_dir, keep)  # only now: this checkpoint is complete
            log(f"saved {dest.relative_to(run_dir)} at step {steps + state.global_step}")

    return TunelabCallback()


def load_optimizer_state(optimizer, checkpoint: Path, model=None) -> None:
    """Carry the previous stage's optimizer moments into this stage's optimizer, keeping this stage's learning rates
    (its schedule was built with them). A sharded model's optimizer takes the whole state into its shards."""
    import torch

    from tunelab.train.sharding import is_sharded, load_full_optimizer_state

    lrs = [(g.get("lr"), g.get("initial_lr")) for g in optimizer.param_groups]
    state = torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=True)
    if model is not None and is_sharded(model):
        load_full_optimizer_state(model, optimizer, state)
    else:
        optimizer.load_state_dict(state)
    for g, (lr, initial) in zip(optimizer.param_groups, lrs):
        g["lr"] = lr
        if initial is not None:
            g["initial_lr"] = initial
