"""The queue of a one-pass evaluation: every target's pending generate() calls, cut into batches that mix
adapters (shared.py owns the weights, mixgen.py generates a batch).

The batch leader works as hf.Batcher's does (no background task: a waiting caller gathers for a moment, then
runs the next batch inline), except that it gathers until the queue is quiet rather than until a batch is
full. What differs most is how a batch is cut from the queue: the longest prompt waiting
goes first (rows of similar length waste little padding), its own adapter's waiting rows fill the batch
first (a batch of one adapter runs PEFT's plain path), then — when they are fewer than `fill_below` — the
other adapters' rows, longest first, fill its tail, so that no target leaves a small batch behind. How far
mixing pays is the device's: on a GPU a decode step costs about the same for 1 or 16 rows and PEFT's
mixed-adapter path little more, so a short batch is always filled; on a CPU a batch's cost grows with its
rows (SmolLM2, 1 thread: 16 rows 3.9× one row's time, 8 rows 2.5×) and PEFT's mixed path copies each
adapter's rows in and out of every adapted layer (+60–90 % a 16-row batch), so only tails under half a batch
are filled there. A failed batch of several adapters is run again adapter by adapter, so that an error
reaches only the rows (the target) that cause it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import anyio

from tunelab.evaluate.hf import Batcher, BatchSettings, Generation, _Request, deliver
from tunelab.evaluate.mixgen import BASE, Row


@dataclass(frozen=True)
class RowKey(BatchSettings):
    """A queued request's settings: the task's (hf.Batcher's batch key, here a row's own), and the target's
    adapter and end tokens."""

    adapter: str = BASE
    stop_ids: tuple[int, ...] = ()


_GATHER_STEP_S = 0.005  # a batch leader waits while requests keep arriving, one step at a time,
_GATHER_MAX_S = 0.1  # at most this long

RunRows = Callable[[list[Row], list[int]], list[Generation]]  # (rows, their shared stop tokens) -> answers


class MixedBatcher(Batcher):
    """Batches the generate() calls of every target of a pass (submit through AdapterQueue)."""

    def __init__(self, run_rows: RunRows, batch_size: int, fill_below: int | None = None):
        super().__init__(None, batch_size)
        self._run_rows = run_rows
        self._fill_below = batch_size if fill_below is None else fill_below
        self.batches = 0  # batches run, and how many of them held more than one adapter
        self.mixed = 0

    async def _gather(self) -> None:
        """Wait until the queue is quiet: the callers whose answers came back with the last batch (scored, on
        to their next sample) have submitted again, so that a target's rows can fill a batch of their own."""
        seen, waited = -1, 0.0
        while len(self._pending) != seen and waited < _GATHER_MAX_S:
            seen = len(self._pending)
            await anyio.sleep(_GATHER_STEP_S)
            waited += _GATHER_STEP_S

    def _run_next(self) -> None:
        batch = self._cut()
        self._pending = [r for r in self._pending if not any(r is b for b in batch)]
        # a batch tensor that does not depend on the order in which inspect delivered the samples
        batch.sort(key=lambda r: (len(r.prompt_ids), r.prompt_ids, _key(r).adapter, r.seed or 0))
        self.batches += 1
        self.mixed += len({_key(r).adapter for r in batch}) > 1
        self._run(batch, isolate=True)

    def _cut(self) -> list[_Request]:
        head = max(self._pending, key=lambda r: len(r.prompt_ids))
        stops, adapter = _key(head).stop_ids, _key(head).adapter
        longest_first = sorted((r for r in self._pending if _key(r).stop_ids == stops),
                               key=lambda r: -len(r.prompt_ids))
        own = [r for r in longest_first if _key(r).adapter == adapter]
        if len(own) >= self._fill_below:
            return own[: self._batch_size]
        return (own + [r for r in longest_first if _key(r).adapter != adapter])[: self._batch_size]

    def _run(self, batch: list[_Request], isolate: bool) -> None:
        rows = [Row(r.prompt_ids, _key(r).adapter, _key(r), r.seed) for r in batch]
        try:
            results = self._run_rows(rows, list(_key(batch[0]).stop_ids))
        except Exception as exc:
            adapters = sorted({row.adapter for row in rows})
            if isolate and len(adapters) > 1:  # whose rows fail? each adapter's alone
                for adapter in adapters:
                    self._run([r for r in batch if _key(r).adapter == adapter], isolate=False)
                return
            deliver(batch, error=exc)
            return
        deliver(batch, results)


def _key(request: _Request) -> RowKey:
    assert isinstance(request.settings, RowKey)
    return request.settings


class AdapterQueue:
    """One target's entry into the pass's queue: what the provider's generate() submits to."""

    def __init__(self, batcher: MixedBatcher, adapter: str, stop_ids: list[int]):
        self.batcher, self.adapter, self.stop_ids = batcher, adapter, tuple(stop_ids)

    async def submit(self, prompt_ids: list[int], settings: BatchSettings, seed: int | None = None) -> Generation:
        key = RowKey(settings.max_new_tokens, settings.top_logprobs, settings.sampling, settings.stop_seqs,
                     self.adapter, self.stop_ids)
        return await self.batcher.submit(prompt_ids, key, seed)
