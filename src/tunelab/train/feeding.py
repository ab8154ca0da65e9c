"""What the trainer feeds and how long it waits for it: a mixin for the SFTTrainer subclass of
runner.py, so the runner stays about training and these hooks stay in one place."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from tunelab.train.dataloading import TimedIterator
from tunelab.train.ordering import FixedOrderSampler, OrderLog, order_record, record_draws

if TYPE_CHECKING:
    from transformers import Trainer

    from tunelab.train.metrics import LocalCounts

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
