"""A run priced on first contact (nothing measured on this CPU): what the job adds to its timed bare micro-batches
(forecast/cpuspeed.py), part by part as the run will do it — the loop's cost per optimizer step (forecast/loopcost.py),
its validation passes (the timed forward per token over the split's padded tokens) and its saves (the timed save of
adapter and optimizer state). A shape too large to time gets a validation at VALIDATION_COST of a step (assumed) and
unpriced saves; the source says which."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tunelab.forecast.cpuspeed import TimedSpeed
from tunelab.forecast.loopcost import LoopOverhead
from tunelab.spec import TrainingConfig

VALIDATION_COST = 1 / 3  # a forward pass costs about a third of a training step (assumed, where none was timed)


@dataclass(frozen=True)
class RunOverheads:
    """What a first-contact run adds to its micro-batches (loop, validations, saves) and how each was priced."""

    loop_s: float
    validations: int
    validation_s: float
    saves: int
    save_s: float
    source: str
    imports_s: float | None = None  # the loop's measuring job's start-up (a fresh interpreter's imports)

    @property
    def total_s(self) -> float:
        return self.loop_s + self.validations * self.validation_s + self.saves * self.save_s


def validation_count(steps: int, every: int | None) -> int:
    """Validations a run of `steps` makes: at every multiple of `every`, and at the last step unless one fell
    there (train/runner.py `_validate_at_end`) — ceil(steps / every); none without `every`."""
    return math.ceil(steps / every) if every and steps > 0 else 0


def first_contact_overheads(timed: TimedSpeed, loop: LoopOverhead, t: TrainingConfig, steps: int, saves: int,
                            tokens_per_microbatch: int, validation_tokens: int, processes: int = 1) -> RunOverheads:
    """The parts a run adds to `steps` steps of micro-batches timed at `timed` (validation tokens as padded)."""
    n_val = validation_count(steps, t.validation_every_steps)
    words = [loop.source] if steps else []
    if timed.forward_s:
        forward_per_token = timed.forward_s / max(tokens_per_microbatch, 1)
        how = f"a forward timed here ({timed.forward_s * 1e3:.1f} ms a micro-batch)"
    else:
        forward_per_token = VALIDATION_COST / timed.tokens_per_s
        how = f"a forward at {VALIDATION_COST:.2f} of a training step (assumed)"
    val_s = forward_per_token * validation_tokens / max(processes, 1)
    if n_val:
        words.append(f"+ {n_val} validation(s) of {validation_tokens:,} tokens, {val_s:.2f} s each at {how}")
    save_s = timed.save_s or 0.0
    if saves:
        words.append(f"+ {saves} save(s), {save_s:.2f} s each (its adapter and optimizer state written, timed here)"
                     if timed.save_s else f"+ {saves} save(s), not priced (none timed for a shape this large)")
    return RunOverheads(loop.step_s * steps, n_val, val_s, saves, save_s, " ".join(words), loop.imports_s)
