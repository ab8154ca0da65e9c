"""The last step's forward and backward, replayed from the first's: the same ops on the same shapes make the same
allocations in the same order, so the allocator model is fed the recorded events instead of dispatching every op again;
only the allocator's state they meet differs.

Replayed only when what the recording leaves live is exactly the gradients and every free in it is of its own
allocations; otherwise the steps differ and the last one runs in full. The gradients are then made again, uncounted, so
clipping, the optimizer and `zero_grad` run as before."""

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
