"""What tunelab adds to TRL's training loop: a trainer that counts every micro-batch's tokens and times its
evaluations and saves, and a callback that writes metrics.jsonl, status.json and the epoch_N checkpoints.
Kept apart from runner.py (which builds the trainer and drives a run) so each stays readable."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.faults import kill_point, pace_step
from tunelab.fsutil import directory_bytes, space_guard
from tunelab.models.loss_positions import keeps_logits, kept_logits_inputs
from tunelab.rundir.checkpoints import Counters, last_complete_checkpoint, write_counters
from tunelab.rundir.status import StatusWriter
from tunelab.train.checkpoints import at_epoch_end, epoch_index, prune_trainer_checkpoints, publish_epoch_checkpoint
from tunelab.train.context import StageContext
from tunelab.train.dataloading import TimedIterator
from tunelab.train.distributed import barrier, log, world
from tunelab.train.metrics import LocalCounts, MetricsWriter, count_batch, process_age_s, sync_counters
from tunelab.train.ordering import FixedOrderSampler, OrderLog, order_record, record_draws

if TYPE_CHECKING:
    from transformers import Trainer

    _TrainerBase = Trainer  # the class this mixes into, for the type checker: super() calls resolve there
else:
    _TrainerBase = object


def _innermost_sampler(dataloader) -> Any:
    """The index sampler under accelerate's wrappers (a BatchSamplerShard in a distributed run)."""
    bs: Any = getattr(dataloader, "batch_sampler", None)
    while getattr(bs, "batch_sampler", None) is not None and bs.batch_sampler is not bs:
        bs = bs.batch_sampler
    return getattr(bs, "sampler", None)


def _epoch_index(epoch: float | None) -> int:
    """The epoch a float state.epoch lies in (a value a hair below an integer is that integer)."""
    e = float(epoch or 0.0)
    return int(round(e)) if math.isclose(e, round(e), abs_tol=1e-6) else int(math.floor(e))


class FeedingMixin(_TrainerBase):
    """Times each fetch of a micro-batch into `local.data_wait`; feeds a fixed order when `fixed_order` is set;
    records the order every epoch really drew in `order_log` (data_order.jsonl; main process, when set)."""

    fixed_order: list[int] | None = None
    order_log: OrderLog | None = None
    order_spec: Any = "shuffled"
    order_tag: tuple[int, str | None] = (0, None)  # a staged run: (epochs of the stages before, this stage)
    local: LocalCounts  # set by the runner on the trainer it builds

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        return super().get_batch_samples(TimedIterator(epoch_iterator, self.local.data_wait), num_batches, device)

    def _get_train_sampler(self, train_dataset=None):
        if self.fixed_order is not None:
            return FixedOrderSampler(self.fixed_order)
        return super()._get_train_sampler(train_dataset)

    def get_train_dataloader(self):
        dataloader = super().get_train_dataloader()
        sampler = _innermost_sampler(dataloader)
        if self.order_log is not None and sampler is not None and self.args.process_index == 0:
            record_draws(sampler, self._record_order)
        return dataloader

    def _record_order(self, indices: list[int]) -> None:
        log = self.order_log
        if log is None:  # registered only when set (get_train_dataloader)
            return
        offset, stage = self.order_tag
        # the seed the sampler shuffled with: data_seed (the runner sets it), else the Trainer's seed, as in HF
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        rec = order_record(offset + _epoch_index(self.state.epoch), self.order_spec, seed, indices)
        log.append(replace(rec, stage=stage))


class PlainLossMixin(_TrainerBase):
    """TRL's fused LM head saves GPU memory on large vocabularies but costs time on a CPU (docs/benchmarks.md), so there
    the model computes its own loss (`plain_loss`): the same value, from the logits of the positions whose next token
    carries the loss only (models/loss_positions.py). A training step's, and a validation's that reads its loss only
    (TRL's prediction_step asks for no outputs then); not an evaluation that reads the logits."""

    plain_loss: bool = False  # the model's own loss, not TRL's fused LM head (trainer.plain_loss)
    _keeps_logits: bool | None = None  # whether the model takes logits_to_keep (asked once)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.plain_loss:
            from transformers import Trainer

            if self._keeps_logits is None:
                self._keeps_logits = keeps_logits(model)
            if self._keeps_logits and not return_outputs:
                inputs = {**inputs, "use_cache": False, **kept_logits_inputs(inputs.get("labels"))}  # no KV cache: as TRL
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


class CountedFlopsMixin:
    """floating_point_ops from the first step's count per input token: transformers walks every parameter each step,
    and a LoRA run's do not change (Trainer mixin)."""

    _flops_per_token: float | None = None

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        main = getattr(getattr(self, "model", None), "main_input_name", "input_ids")
        tokens = inputs[main].numel() if hasattr(inputs.get(main), "numel") else 0
        if not tokens:
            return super().floating_point_ops(inputs)  # type: ignore[misc]
        if self._flops_per_token is None:
            self._flops_per_token = super().floating_point_ops(inputs) / tokens  # type: ignore[misc]
        return round(self._flops_per_token * tokens)


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

    from tunelab.train.sharding import ShardingMixin

    class CountingSFTTrainer(FeedingMixin, PlainLossMixin, ShardingMixin, CountedFlopsMixin, SFTTrainer):
        """Counts every micro-batch's tokens and times evaluations and saves; saves and resumes a sharded model; takes
        the model's own loss where plain_loss says; counts a step's FLOPs without walking the parameters."""

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
