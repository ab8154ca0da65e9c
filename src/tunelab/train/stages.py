"""Staged runs (run.yaml `stages:`): stage k trains from stage k-1's final adapter, in the run's own directory.

Every stage writes into the run's files as one continuous run (steps, epochs and checkpoints numbered across stages;
stages.json maps them back). Each stage keeps its own trainer state and is recorded only once complete, so a failure in
stage 3 resumes stage 3 and never reruns 1-2."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.rundir.checkpoints import Counters, complete_epochs, epoch_dir, last_complete_checkpoint, stage_state_dir
from tunelab.rundir.config import RunConfig
from tunelab.rundir.layout import STAGES_FILE
from tunelab.rundir.stages import StageRecord, read_stage_records, write_stage_records
from tunelab.rundir.summary import Summary, read_summary
from tunelab.train.context import HeldFiles, StageContext
from tunelab.train.distributed import barrier, log
from tunelab.train.runner import complete_run, train_run


def train_stages(cfg: RunConfig, held: HeldFiles) -> Summary | None:
    """Train the stages not yet complete, in order, the last completing the run; its summary on the main process."""
    summary: Summary | None = None
    done = read_stage_records(cfg.run_dir)  # the stages earlier starts completed
    while (ctx := next_stage(cfg, done)) is not None:
        trained = train_run(cfg.stage_config(ctx.index), ctx, held)  # None on processes other than the main one
        if trained is not None:
            done = record_stage(cfg.run_dir, done, ctx, cfg, trained.summary, trained.counters)
            log(f"stage {ctx.name} completed at step {trained.summary.steps}")
            summary = trained.summary
            if ctx.last:
                summary = complete_run(cfg.run_dir, replace(summary, stages=done), held.status)
        barrier()  # stage k+1 starts from what the main process recorded for stage k
        if trained is None:  # another process: the record is in the main process's file
            done = read_stage_records(cfg.run_dir)
    return summary or read_summary(cfg.run_dir)


def record_stage(run_dir: Path, done: list[StageRecord], ctx: StageContext, cfg: RunConfig, summary: Summary,
                 counters: Counters) -> list[StageRecord]:
    """Add the stage just completed to stages.json (main process): the record is what marks it complete."""
    done = [r for r in done if r.index < ctx.index]
    dataset = cfg.stages[ctx.index].dataset if cfg.stages else cfg.dataset  # the run's or the stage's own cfg
    rec = StageRecord(name=ctx.name or "", index=ctx.index, dataset=dataset.name, optimizer=ctx.optimizer,
                      epochs=[e for e in complete_epochs(run_dir) if e >= ctx.epoch_offset],
                      first_step=ctx.step_offset, last_step=int(summary.steps or ctx.step_offset),
                      examples=int(summary.train_examples or 0), counters=counters,
                      final_loss=summary.stage_final_loss, duration_s=summary.stage_duration_s)
    write_stage_records(run_dir, [*done, rec])
    return [*done, rec]


def next_stage(cfg: RunConfig, done: list[StageRecord]) -> StageContext | None:
    """The first stage not yet complete (None if all are); raises when the records no longer match run.yaml's."""
    run_dir = cfg.run_dir
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
