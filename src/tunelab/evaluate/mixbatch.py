"""The queue of a one-pass evaluation: every target's pending generate() calls, cut into batches that may mix adapters
(shared.py owns the weights, mixgen.py generates a batch).

The leader works as hf.Batcher's, but gathers until the queue is quiet. A batch starts with the longest prompt waiting
(of the last batch's adapter while its rows last: one merge each, shared.py), its own adapter's rows fill it first, up
to batchcut.decode_rows (PEFT's plain path, merged on a CPU; shared.py prefills them in length groups and decodes them
as one, groupfill.py), then, below `fill_below`, other adapters' rows fill its tail, up to a batch size. How far mixing pays is the device's: on a GPU a decode step costs about the same for any
rows, so a short batch is always filled; on a CPU rows cost, PEFT's mixed path copies each adapter's rows and runs
unmerged, so no batch is mixed unless asked (docs/evaluation.md). A failed mixed batch is run again adapter by adapter,
so an error reaches only the target that causes it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar, cast

import anyio

from tunelab.evaluate.hf import Batcher, BatchSettings, Generation, _Request, deliver
from tunelab.evaluate.mixgen import BASE, Row


@dataclass(frozen=True)
class RowKey(BatchSettings):
    """A queued request's settings: the task's batch key, and the target's adapter and end tokens."""

    adapter: str = BASE
    stop_ids: tuple[int, ...] = ()


_GATHER_STEP_S = 0.005  # a batch leader waits while requests keep arriving, one step at a time,
_GATHER_MAX_S = 0.1  # at most this long

T = TypeVar("T")
RunRows = Callable[[list[Row], list[int]], list[Generation]]  # (rows, their shared stop tokens) -> answers


class MixedBatcher(Batcher):
    """Batches the generate() calls of every target of a pass (submit through AdapterQueue)."""

    def __init__(self, run_rows: RunRows, batch_size: int, fill_below: int | None = None,
                 decode_rows: int | None = None):
        super().__init__(None, batch_size)
        self._run_rows = run_rows
        self._fill_below = batch_size if fill_below is None else fill_below
        self._decode_rows = decode_rows or batch_size  # one adapter's rows a batch holds (batchcut.decode_rows)
        self._adapter = BASE  # the last batch's adapter: its rows go on while they last (one merge each, shared.py)
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
        batch = cut_batch(self._pending, lambda r: r.prompt_ids, _key, self._batch_size, self._fill_below,
                          self._decode_rows, self._adapter)
        self._adapter = _key(batch[0]).adapter
        self._pending = [r for r in self._pending if not any(r is b for b in batch)]
        # a batch tensor that does not depend on the order in which inspect delivered the samples
        batch.sort(key=lambda r: _row_order(r.prompt_ids, _key(r), r.seed))
        rows = [Row(r.prompt_ids, _key(r).adapter, _key(r), r.seed) for r in batch]
        for request, result in zip(batch, self._generate(rows)):
            if isinstance(result, BaseException):
                deliver([request], error=result)  # type: ignore[arg-type]
            else:
                deliver([request], [result])

    def generate_now(self, rows: list[Row]) -> list[Generation | BaseException]:
        """Every row answered now, in the batches the queue would cut, with no event loop; answers or batch errors."""
        pending = list(range(len(rows)))
        out: list[Generation | BaseException | None] = [None] * len(rows)
        while pending:
            batch = cut_batch(pending, lambda i: rows[i].prompt_ids, lambda i: _settings(rows[i]), self._batch_size,
                              self._fill_below, self._decode_rows, self._adapter)
            self._adapter = rows[batch[0]].adapter
            chosen = set(batch)
            pending = [i for i in pending if i not in chosen]
            batch.sort(key=lambda i: _row_order(rows[i].prompt_ids, _settings(rows[i]), rows[i].seed))
            for i, result in zip(batch, self._generate([rows[i] for i in batch])):
                out[i] = result
        return cast(list[Generation | BaseException], out)  # every row was in one batch; _generate answers each

    def _generate(self, rows: list[Row], isolate: bool = True) -> list[Generation | BaseException]:
        """One batch's answers; a failed mixed batch runs again per adapter, so errors reach their target only."""
        if isolate:  # a batch cut from the queue (not a failed batch's rerun, adapter by adapter)
            self.batches += 1
            self.mixed += len({row.adapter for row in rows}) > 1
        try:
            answers: list[Generation | BaseException] = list(self._run_rows(rows, list(_settings(rows[0]).stop_ids)))
            if len(answers) != len(rows) or any(a is None for a in answers):  # which answer is whose is unknown
                raise RuntimeError(f"the model gave {sum(a is not None for a in answers)} answers for a batch of "
                                   f"{len(rows)} rows")
            return answers
        except Exception as exc:
            adapters = sorted({row.adapter for row in rows})
            if not (isolate and len(adapters) > 1):
                return [exc] * len(rows)
            out: list[Generation | BaseException] = list(rows)  # type: ignore[arg-type]
            for adapter in adapters:
                mine = [i for i, row in enumerate(rows) if row.adapter == adapter]
                for i, result in zip(mine, self._generate([rows[i] for i in mine], isolate=False)):
                    out[i] = result
            return out


def cut_batch(pending: list[T], prompt: Callable[[T], list[int]], key: Callable[[T], RowKey], batch_size: int,
              fill_below: int, decode_rows: int | None = None, prefer: str | None = None) -> list[T]:
    """The next batch from what waits: the longest prompt first (of `prefer`'s rows while any wait), its own adapter's
    rows (of the same end tokens), longest first, up to `decode_rows` (None: batch_size); when they are fewer than
    `fill_below`, the other adapters' rows, longest first, fill its tail up to batch_size."""
    preferred = [r for r in pending if key(r).adapter == prefer]
    head = max(preferred or pending, key=lambda r: len(prompt(r)))
    stops, adapter = key(head).stop_ids, key(head).adapter
    longest_first = sorted((r for r in pending if key(r).stop_ids == stops), key=lambda r: -len(prompt(r)))
    own = [r for r in longest_first if key(r).adapter == adapter]
    if len(own) >= fill_below:
        return own[:decode_rows or batch_size]
    return (own + [r for r in longest_first if key(r).adapter != adapter])[:batch_size]


def _key(request: _Request) -> RowKey:
    assert isinstance(request.settings, RowKey)
    return request.settings


def _settings(row: Row) -> RowKey:
    assert isinstance(row.settings, RowKey)
    return row.settings


def _row_order(prompt_ids: list[int], key: RowKey, seed: int | None) -> tuple:
    """A batch's rows in an order that does not depend on how they arrived."""
    return len(prompt_ids), prompt_ids, key.adapter, seed or 0


class AdapterQueue:
    """One target's entry into the pass's queue: what the provider's generate() submits to."""

    def __init__(self, batcher: MixedBatcher, adapter: str, stop_ids: list[int]):
        self.batcher, self.adapter, self.stop_ids = batcher, adapter, tuple(stop_ids)

    async def submit(self, prompt_ids: list[int], settings: BatchSettings, seed: int | None = None) -> Generation:
        key = RowKey(settings.max_new_tokens, settings.top_logprobs, settings.sampling, settings.stop_seqs,
                     self.adapter, self.stop_ids)
        return await self.batcher.submit(prompt_ids, key, seed)
