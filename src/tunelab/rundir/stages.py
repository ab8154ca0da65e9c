"""stages.json: the completed stages of a staged run, in order, each recorded only once complete (so a failure in stage
3 never reruns 1-2); a StageRecord maps the epoch checkpoints, numbered across stages, back."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.fsutil import atomic_write_json, read_json
from tunelab.rundir.checkpoints import Counters, complete_epochs, epoch_dir, stage_state_dir
from tunelab.rundir.layout import STAGES_FILE
from tunelab.rundir.record import JsonRecord

if TYPE_CHECKING:
    from tunelab.rundir.config import RunConfig


@dataclass(kw_only=True)
class StageRecord(JsonRecord):
    """A completed stage, as stages.json keeps it (summary.json's `stages` holds the same without counters)."""

    name: str
    index: int
    dataset: str
    optimizer: str
    epochs: list[int]  # global epoch indices (checkpoints/epoch_N) this stage published
    first_step: int  # the run's step before the stage's first (its offset)
    last_step: int
    examples: int
    counters: Counters | None = field(default=None)  # the run's counters when the stage ended
    final_loss: float | None = None
    duration_s: float | None = None

    @classmethod
    def decode(cls, known: dict[str, Any]) -> dict[str, Any]:
        counters = known.get("counters")
        return {**known, "counters": Counters.from_json(counters) if isinstance(counters, dict) else None}

    def without_counters(self) -> dict[str, Any]:
        """The stage as summary.json lists it."""
        return {k: v for k, v in self.to_json().items() if k != "counters"}


def read_stage_records(run_dir: str | Path) -> list[StageRecord]:
    """The completed stages, in order ([] for an unstaged run or before stage 1 completes)."""
    rows = read_json(Path(run_dir) / STAGES_FILE, default=None) or []
    return [StageRecord.from_json(r) for r in rows]


def write_stage_records(run_dir: str | Path, records: list[StageRecord]) -> Path:
    return atomic_write_json(Path(run_dir) / STAGES_FILE, [r.to_json() for r in records])


STAGE_FIELDS = ("stage", "stage_epoch", "ends_stage")  # to_dict's keys, in results and export records
NO_STAGE: dict[str, Any] = dict.fromkeys(STAGE_FIELDS)  # an unstaged checkpoint's


@dataclass(frozen=True)
class CheckpointStage:
    """Where a staged run's epoch_N sits: its stage, its epoch there, and whether the stage ends on it."""

    stage: str
    epoch: int
    ends_stage: bool

    @property
    def label(self) -> str:
        """'STAGE/epoch_K', as the report writes it beside epoch_N."""
        return f"{self.stage}/epoch_{self.epoch}"

    def to_dict(self) -> dict[str, Any]:
        return dict(zip(STAGE_FIELDS, (self.stage, self.epoch, self.ends_stage)))


def checkpoint_stages(cfg: RunConfig, records: list[StageRecord] | None = None) -> dict[int, CheckpointStage]:
    """{global epoch: its stage}: the completed stages' as recorded, then those to come as planned (none past a stage
    that stops at max_steps). {} unstaged, or when stages.json no longer matches run.yaml. Every reader of a
    checkpoint's stage reads it here."""
    records = read_stage_records(cfg.run_dir) if records is None else records
    if not cfg.stages or [r.name for r in records] != [s.name for s in cfg.stages[:len(records)]]:
        return {}
    out = {e: CheckpointStage(r.name, k, k == len(r.epochs) - 1) for r in records for k, e in enumerate(r.epochs)}
    nxt = max(out, default=-1) + 1
    for s in cfg.stages[len(records):]:
        if s.training.max_steps is not None:
            break
        n = s.training.epochs
        out.update({nxt + k: CheckpointStage(s.name, k, k == n - 1) for k in range(n)})
        nxt += n
    return out


def current_stage(cfg: RunConfig) -> int | None:
    """The index of the first stage not yet complete; None when unstaged or every stage is complete."""
    if not cfg.stages:
        return None
    done = len(read_stage_records(cfg.run_dir))
    return done if done < len(cfg.stages) else None


def current_state_dir(cfg: RunConfig) -> Path:
    """The trainer-state directory a resume of this run would read."""
    i = current_stage(cfg)
    return stage_state_dir(cfg.run_dir, cfg.stages[i].name if i is not None else None)


def restart_current_stage(cfg: RunConfig) -> None:
    """Drop the current stage's trainer state and the epochs it published: it starts again from the end of
    the stage before (a retry that cannot resume exactly); earlier stages are kept."""
    i = current_stage(cfg)
    if i is None:
        return
    shutil.rmtree(stage_state_dir(cfg.run_dir, cfg.stages[i].name), ignore_errors=True)
    kept = {e for r in read_stage_records(cfg.run_dir) for e in r.epochs}
    for e in complete_epochs(cfg.run_dir):
        if e not in kept:
            shutil.rmtree(epoch_dir(cfg.run_dir, e), ignore_errors=True)
