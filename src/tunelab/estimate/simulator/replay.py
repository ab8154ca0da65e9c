"""The last step's forward and backward, replayed from the first's: the same ops on the same shapes make the
same allocations and frees in the same order, so the allocator model is fed the recorded events again instead
of dispatching every op a second time (about 45 % of a simulation's ops). What differs is the allocator's
state they meet (the optimizer's state now exists, freed blocks are cached), and the replay goes through it.

A recording is replayed only when what it leaves live is exactly the trainable parameters' gradients (each in
an allocation of its own) and every free in it is of an allocation it made. Anything else (a cache a first
forward fills and keeps, a free of something older) means the steps differ, and the last step is run in full.
After the replay the gradients are made again, uncounted, each holding the allocation the replay left for it,
so that gradient clipping, the optimizer step and `zero_grad` run on them as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunelab.estimate.simulator.tracker import Free, Malloc, Phase, Recording, StorageTracker


@dataclass(frozen=True)
class _Grad:
    param: torch.nn.Parameter
    handle: int  # the recorded allocation holding it
    size: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype

    def empty(self) -> torch.Tensor:
        return torch.empty_strided(self.size, self.stride, dtype=self.dtype, device=self.param.device)


@dataclass(frozen=True)
class FirstStep:
    """The first step's micro-batches as the allocator saw them, and the gradients they left."""

    recording: Recording
    tracker: StorageTracker
    grads: tuple[_Grad, ...]

    @classmethod
    def of(cls, rec: Recording, tracker: StorageTracker, trainable: list[torch.nn.Parameter]) -> FirstStep | None:
        """The first step, when it can be replayed (see the module docstring); else None."""
        made: set[int] = set()
        for event in rec.events:
            if isinstance(event, Malloc):
                made.add(event.handle)
            elif isinstance(event, Free):
                if event.handle not in made:
                    return None
                made.discard(event.handle)
        grads = []
        for p in trainable:
            if p.grad is None:
                continue
            handle = tracker.handle_of(p.grad)
            if handle is None:  # a gradient not counted: nothing to give it back
                return None
            grads.append(_Grad(p, handle, tuple(p.grad.shape), p.grad.stride(), p.grad.dtype))
        handles = [g.handle for g in grads]
        if len(set(handles)) != len(handles) or set(handles) != made:
            return None
        return cls(rec, tracker, tuple(grads))

    def replay_as(self, step: int) -> None:
        """Step `step`'s micro-batches: the recorded events under this step's phase names, then the gradients."""
        phases = {e.name: e.name.replace("step 1:", f"step {step}:", 1) for e in self.recording.events
                  if isinstance(e, Phase)}
        live = self.tracker.replay(self.recording, phases)
        for g in self.grads:
            g.param.grad = self.tracker.adopt(g.empty, live[g.handle])
