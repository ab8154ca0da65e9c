"""Staged runs (run.yaml `stages:`): stage k trains from stage k-1's final adapter, in the run's own directory.

Every stage writes into the run's files as one continuous run: metrics.jsonl steps and epochs count on
from the stages before (each row names its stage), epoch checkpoints are numbered across stages
(checkpoints/epoch_N, so evaluation, the report and archiving see one sequence), and stages.json maps them
back (stage, its epochs, its steps). Each stage keeps its own trainer state (trainer_state/STAGE/) and
is recorded in stages.json only once complete: a failure in stage 3 resumes stage 3 and never reruns 1-2.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.fsutil import read_json
from tunelab.rundir import layout
from tunelab.rundir.checkpoints import Counters, complete_epochs, epoch_dir, last_complete_checkpoint, stage_state_dir
from tunelab.rundir.layout import STAGES_FILE
from tunelab.rundir.stages import (  # noqa: F401  (re-exported: readers still import them here)
    StageRecord,
    current_stage,
    current_state_dir,
    epoch_labels,
    read_stage_records,
    restart_current_stage,
    write_stage_records,
)
from tunelab.runconfig import RunConfig


@dataclass(frozen=True)
class StageContext:
    """Where one stage sits in its run: offsets of its steps and epochs, its trainer-state directory, and
    what it starts from. An unstaged run is the single stage with no name and no offsets."""

    name: str | None = None
    index: int = 0
    optimizer: str = "fresh"
    count: int = 1
    step_offset: int = 0
    epoch_offset: int = 0
    init_adapter: Path | None = None  # the previous stage's final adapter
    init_optimizer: Path | None = None  # the previous stage's last trainer checkpoint (optimizer: carried)
    counters: Counters | None = None  # the run's counters when the previous stage ended

    @property
    def last(self) -> bool:
        return self.index == self.count - 1

    def state_dir(self, run_dir: Path) -> Path:
        return stage_state_dir(run_dir, self.name)

    def label(self) -> str:
        return f"stage {self.index + 1}/{self.count} ({self.name})" if self.name else ""


def record_stage(run_dir: Path, ctx: StageContext, cfg: RunConfig, summary: dict[str, Any],
                 counters: dict[str, Any] | Counters) -> StageRecord:
    """Add the stage just completed to stages.json (main process; the record is what marks it complete)."""
    done = [r for r in read_stage_records(run_dir) if r.index < ctx.index]
    rec = StageRecord(name=ctx.name or "", index=ctx.index, dataset=cfg.dataset.name,
                      optimizer=ctx.optimizer,
                      epochs=[e for e in complete_epochs(run_dir) if e >= ctx.epoch_offset],
                      first_step=ctx.step_offset, last_step=int(summary.get("steps") or ctx.step_offset),
                      examples=int(summary.get("train_examples") or 0),
                      counters=counters if isinstance(counters, Counters) else Counters.from_json(counters),
                      final_loss=summary.get("stage_final_loss"), duration_s=summary.get("stage_duration_s"))
    write_stage_records(run_dir, [*done, rec])
    return rec


def next_stage(cfg: RunConfig, run_dir: Path) -> StageContext | None:
    """The first stage not yet complete (None when every stage is), with its offsets and starting point.
    Raises when the recorded stages no longer match run.yaml's (a spec changed after training began)."""
    done = read_stage_records(run_dir)
    names = [s.name for s in cfg.stages]
    if [r.name for r in done] != names[:len(done)]:
        raise TunelabError(f"stages.json records stages {[r.name for r in done]} but run.yaml has {names}: "
                           "the stages changed after training began; start the run again in a fresh directory",
                           file=run_dir / STAGES_FILE)
    i = len(done)
    if i == len(names):
        return None
    prev = done[-1] if done else None
    init_optimizer = None
    if prev is not None and cfg.stages[i].optimizer == "carried":
        init_optimizer = last_complete_checkpoint(stage_state_dir(run_dir, prev.name))
        if init_optimizer is None:
            raise TunelabError(f"stage {cfg.stages[i].name}: optimizer: carried, but stage {prev.name} kept no "
                               "complete trainer checkpoint", file=stage_state_dir(run_dir, prev.name))
    return StageContext(
        name=names[i], index=i, count=len(names), optimizer=cfg.stages[i].optimizer,
        step_offset=prev.last_step if prev else 0,
        epoch_offset=(max(prev.epochs) + 1 if prev.epochs else 0) if prev else 0,
        init_adapter=epoch_dir(run_dir, max(prev.epochs)) if prev and prev.epochs else None,
        init_optimizer=init_optimizer,
        counters=replace(prev.counters) if prev and prev.counters else None)








def train_stages(cfg: RunConfig) -> dict[str, Any]:
    """Train the stages not yet complete, in order; the last one writes the run's summary.json."""
    from tunelab.train.distributed import barrier
    from tunelab.train.runner import train_run

    summary: dict[str, Any] = {}
    while True:
        ctx = next_stage(cfg, cfg.run_dir)
        if ctx is None:
            return summary or (read_json(cfg.run_dir / layout.SUMMARY_FILE, default={}) or {})
        summary = train_run(cfg.stage_config(ctx.index), ctx)  # {} on processes other than the main one
        barrier()  # stage k+1 reads what the main process recorded for stage k


def stages_summary(run_dir: Path) -> list[dict[str, Any]]:
    """The per-stage part of summary.json."""
    return [r.without_counters() for r in read_stage_records(run_dir)]


def load_optimizer_state(optimizer, checkpoint: Path) -> None:
    """Carry the previous stage's optimizer moments into this stage's optimizer, keeping this stage's
    learning rates (its schedule was built with them; the loaded groups would bring the old ones)."""
    import torch

    lrs = [(g.get("lr"), g.get("initial_lr")) for g in optimizer.param_groups]
    state = torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state)
    for g, (lr, initial) in zip(optimizer.param_groups, lrs):
        g["lr"] = lr
        if initial is not None:
            g["initial_lr"] = initial

