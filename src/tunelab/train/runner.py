"""Train one run (or one stage of a staged run) in its run directory; resume after a kill.

In order: resume (resume.py), say running in status.json, build the trainer (trainer.py) and train, the callback
(loop_hooks.py) writing metrics, progress and epoch checkpoints, a stop signal saving and stopping (interrupts.py); then
validate at the last step, measure the step cost, summarize from the rows the job holds. A failure says why in
status.json and raises. Completing the run is complete_run's, after the last stage."""

from __future__ import annotations

import signal
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import NoSpaceError, TunelabError
from tunelab.faults import inject_oom_fault
from tunelab.fsutil import is_disk_full, no_space_error
from tunelab.host.cpuload import LoadMeter, LoadWindow
from tunelab.host.device import resolve_dtype
from tunelab.rundir import layout
from tunelab.rundir.checkpoints import Counters, last_complete_checkpoint
from tunelab.rundir.config import RunConfig
from tunelab.rundir.metrics import MetricRow, steady_tokens_per_s
from tunelab.rundir.status import StatusWriter, now_iso
from tunelab.rundir.summary import (
    PackingStats,
    ProcessMemory,
    StepCost,
    Summary,
    calibrates_step_cost,
    write_packing,
    write_summary,
)
from tunelab.spec import Strategy, TrainingConfig
from tunelab.train.checkpoints import drop_unfinished_saves
from tunelab.train.context import HeldFiles, StageContext
from tunelab.train.dataloading import pipeline_summary
from tunelab.train.distributed import agree, log, world
from tunelab.train.interrupts import SignalWatch, TrainingStopped, after_stop, make_checkpoint_policy
from tunelab.train.loop_hooks import make_callback
from tunelab.train.metrics import LocalCounts, MetricsWriter, job_root, packing_stats
from tunelab.train.ordering import OrderLog
from tunelab.train.resume import Resume, resume
from tunelab.train.sharding import applied_strategy, gather_process_memory, shard_trainer
from tunelab.train.summary import StageFacts, Timing, run_facts, summarize
from tunelab.train.trainer import build_trainer


@dataclass(frozen=True)
class Trained:
    """A run (or one stage of it) just trained, on the main process: its summary and the run's counters."""

    summary: Summary
    counters: Counters


def train_run(cfg: RunConfig, stage: StageContext | None = None, held: HeldFiles | None = None) -> Trained | None:
    """Train cfg (a staged run: its `stage`), raising on failure; only the main process writes and returns."""
    if cfg.kind != "finetune" or cfg.training is None:
        raise TunelabError("is a control (evaluation only): nothing to train", field=cfg.name)
    if cfg.stages:
        raise TunelabError("a staged run trains stage by stage (tunelab.train.job.train)", field=cfg.name)
    run_dir = cfg.run_dir
    ctx = stage or StageContext()
    main = world().is_main
    run_dir.mkdir(parents=True, exist_ok=True)
    held = held or HeldFiles.of(run_dir)
    status = held.status
    start = resume(run_dir, ctx, main, held)
    if main:
        _write_start_status(cfg, status, start, ctx)
    try:
        return _train(cfg, run_dir, start, ctx, status)
    except BaseException as exc:
        full = _no_space(exc, run_dir, ctx) if main else None
        if main:
            try:
                _record_stop(full or exc, status, start.checkpoint)
            except NoSpaceError:  # status.json cannot be written either: the dead process reads as interrupted
                pass
        if full is not None:
            raise full from exc
        if not isinstance(exc, (KeyboardInterrupt, TunelabError)):
            traceback.print_exc()
        raise


def complete_run(run_dir: Path, summary: Summary, status: StatusWriter) -> Summary:
    """summary.json, then status.json says completed (a reader needs both: the state alone is not enough)."""
    write_summary(run_dir, summary)
    status.write(state=layout.COMPLETED, finished_at=now_iso(), step=summary.steps)
    log(f"completed: {summary.steps} steps, final loss {summary.final_loss}, checkpoints {summary.checkpoints}")
    return summary


def _no_space(exc: BaseException, run_dir: Path, ctx: StageContext) -> NoSpaceError | None:
    """A full disk as one line saying where `tunelab run` resumes from; None for any other error."""
    if not isinstance(exc, NoSpaceError) and not (isinstance(exc, Exception) and is_disk_full(exc, run_dir)):
        return None
    state_dir = ctx.state_dir(run_dir)
    drop_unfinished_saves(state_dir, run_dir)
    last = last_complete_checkpoint(state_dir)
    path, needed = (exc.path, exc.needed) if isinstance(exc, NoSpaceError) else (str(run_dir), None)
    return no_space_error(path, needed, "free space, then `tunelab run` resumes from "
                          + (last.name if last else "the start" if not ctx.name else f"stage {ctx.name}'s start"))


def _write_start_status(cfg: RunConfig, status: StatusWriter, start: Resume, ctx: StageContext) -> None:
    """status.json at a (re)start: a restart is a resume from a checkpoint, counted over the whole run."""
    started = now_iso()
    stage: dict[str, Any] = {"stage": ctx.name, "stage_index": ctx.index, "stage_count": ctx.count} if ctx.name else {}
    status.write(run=cfg.name, state=layout.RUNNING, attempt=cfg.attempt, started_at=started,
                 first_started_at=start.first_started_at or started,
                 resumed_from=start.checkpoint.name if start.checkpoint else None, restarts=start.restarts,
                 error=None, requeued_job=None, requeued_at=None, **stage)


def _record_stop(exc: BaseException, status: StatusWriter, resume_from: Path | None) -> None:
    """Why training ended early, in status.json; after Slurm's warning, the job's requeue (interrupts.py)."""
    stopped = isinstance(exc, (KeyboardInterrupt, TrainingStopped))
    status.write(state=layout.INTERRUPTED if stopped else layout.FAILED, error=f"{type(exc).__name__}: {exc}",
                 finished_at=now_iso())
    if isinstance(exc, TrainingStopped):
        after_stop(exc, resume_from, status, log)


def _train(cfg: RunConfig, run_dir: Path, start: Resume, ctx: StageContext, status: StatusWriter) -> Trained | None:
    """Build the trainer and train it from `start`, validate at the last step; the main process summarizes."""
    import torch

    from tunelab.compat import quiet_known_library_warnings

    quiet_known_library_warnings()
    t = cfg.training
    assert t is not None
    cuda = torch.cuda.is_available()
    strategy = cfg.resources.strategy(world().size)
    dtype = resolve_dtype(t.dtype, "cuda" if cuda else "cpu")
    _log_start(cfg, ctx, dtype, strategy, start.checkpoint)
    writer = MetricsWriter(run_dir, start.counters, ctx.name, start.metrics)  # holds metrics.jsonl's rows from here on
    fitted = _fit(cfg, t, run_dir, start, ctx, writer, status)
    if fitted.validates:
        _validate_at_end(fitted.trainer, writer.rows)
    processes = gather_process_memory(fitted.trainer)  # a collective: every process at this point
    if not world().is_main:
        return None
    return _summarize(cfg, t, run_dir, start, ctx, fitted, writer, dtype, cuda, processes)


@dataclass(frozen=True)
class _Fitted:
    """What training left for the summary."""

    trainer: Any
    train_examples: int
    validation_examples: int | None
    packing: PackingStats
    startup_s: float | None
    load: LoadWindow | None  # the machine's load over trainer.train() (None: unknown)

    @property
    def validates(self) -> bool:
        return self.validation_examples is not None


def _fit(cfg: RunConfig, t: TrainingConfig, run_dir: Path, start: Resume, ctx: StageContext,
         writer: MetricsWriter, status: StatusWriter) -> _Fitted:
    """Build the trainer and train until max_steps; a stop signal saves, then raises TrainingStopped."""
    w = world()
    startup: dict[str, float | None] = {}
    local = LocalCounts()
    watch = SignalWatch().install()  # before the slow loading: a signal then stops at the first step
    try:  # the handlers go back even when loading fails
        callbacks = [make_callback(run_dir, writer, status, startup, local, t.keep_checkpoints, ctx),
                     make_checkpoint_policy(*t.checkpoint_interval, watch, agree if w.size > 1 else None)]
        trainer, train_ds, val_ds = build_trainer(cfg, start.counters, callbacks, local, ctx)
        strategy = cfg.resources.strategy(w.size)
        if strategy == Strategy.FSDP:
            shard_trainer(trainer, start.checkpoint)  # before the optimizer is built; a resume's adapter first
        pstats = packing_stats(trainer.train_dataset, t.max_seq_len, t.packing)
        if w.is_main:
            write_packing(run_dir, pstats)
        log("dataset: " + ", ".join(f"{k} {v}" for k, v in pstats.to_json().items()))
        inject_oom_fault(t.batch_size)
        trainer.order_log = OrderLog(run_dir, start.orders) if w.is_main else None  # the order each epoch drew
        trainer.order_tag = (ctx.epoch_offset, ctx.name)
        meter = LoadMeter.start(root=job_root())  # a GPU run's load is recorded, never a slowdown (cpuload.py)
        trainer.train(resume_from_checkpoint=str(start.checkpoint) if start.checkpoint else None)
        load = meter.window() if meter is not None else None
    finally:
        watch.restore()
    _check_applied(strategy, applied_strategy(trainer))
    if trainer.state.global_step < trainer.state.max_steps:  # only a stop signal ends training early
        raise TrainingStopped(watch.received or signal.SIGTERM, trainer.state.global_step)  # saved: interrupts.py
    return _Fitted(trainer, len(train_ds), len(val_ds) if val_ds is not None else None, pstats,
                   startup.get("startup_s"), load)


def _summarize(cfg: RunConfig, t: TrainingConfig, run_dir: Path, start: Resume, ctx: StageContext,
               fitted: _Fitted, writer: MetricsWriter, dtype: Any, cuda: bool,
               processes: list[ProcessMemory] | None) -> Trained:
    """The run's (or stage's) summary and counters, from the rows the writer holds and the trainer."""
    trainer, w = fitted.trainer, world()
    counters = writer.counters  # start.counters, carried on by training (the writer and the trainer count into it)
    elapsed = writer.elapsed()  # training (and its evaluations and saves), before the measurements below
    finish_t0 = time.monotonic()
    calibrates = calibrates_step_cost(w.size, bool(ctx.name), cfg.trial is not None)
    if cfg.trial is not None:
        log("step cost not measured: a search's trial (no history records it)")
    step_cost = _step_cost(trainer, t, writer.rows) if calibrates else None
    stage = StageFacts(_stage_final_loss(writer.rows, ctx), elapsed - writer.base_elapsed) if ctx.name else None
    end_counters = writer.snapshot()
    timing = Timing(elapsed, counters.overhead_s, time.monotonic() - finish_t0, fitted.startup_s, counters.saves,
                    counters.save_s)
    summary = summarize(
        run_dir, cfg, writer.rows, steps=ctx.step_offset + trainer.state.global_step,  # the last row's may be earlier
        epochs=ctx.epoch_offset + t.epochs, timing=timing, train_examples=fitted.train_examples,
        validation_examples=fitted.validation_examples, packing=fitted.packing,
        pipeline=pipeline_summary(t, cuda, w.size, counters.data_wait_s, elapsed - counters.overhead_s),
        facts=run_facts(trainer, t, dtype, start.restarts, w.size, applied_strategy(trainer), processes),
        step_cost=step_cost, stage=stage, load=fitted.load)
    return Trained(summary, end_counters)


def _log_start(cfg: RunConfig, ctx: StageContext, dtype: Any, strategy: Strategy | None, resume_from: Path | None
               ) -> None:
    import torch

    log(f"run {cfg.name}: model {cfg.model.path}, dtype {dtype}, device {'cuda' if torch.cuda.is_available() else 'cpu'}"
        + (f", {ctx.label()} on {cfg.dataset.name}" if ctx.name else "")
        + (f", {world().size} processes ({strategy})" if strategy else "")
        + (f", resuming from {resume_from.name}" if resume_from else ""))


def _check_applied(asked: Strategy | None, applied: Strategy | None) -> None:
    """No silent fallback: a run trains with the strategy its run.yaml asks for, or fails saying what it got."""
    if asked != applied:
        raise TunelabError(f"asked for {asked or 'one process'} but the trainer applied {applied or 'none'}",
                           field="resources.distributed")


def _validate_at_end(trainer: Any, rows: list[MetricRow]) -> None:
    """Validate at the last step unless that row exists; the main process decides and every process follows."""
    step = trainer.state.global_step
    missing = world().is_main and not any(r.step == step and r.is_validation for r in rows)
    if agree(missing):
        trainer.evaluate()


def _stage_final_loss(rows: list[MetricRow], ctx: StageContext) -> float | None:
    """The last training loss logged by this stage (stages.json keeps it)."""
    mine = [r for r in rows if r.is_train and (r.step or 0) > ctx.step_offset]
    return mine[-1].loss if mine else None


def _step_cost(trainer: Any, t: TrainingConfig, metrics: list[MetricRow]) -> StepCost | None:
    """Fixed vs per-token step cost (for the planner), measured after the last checkpoint is saved."""
    from tunelab.rundir.summary import STEPS_PER_STEP_COST_REPEAT, step_cost_repeats
    from tunelab.train.step_cost import measure_step_cost

    rows = [r for r in metrics if r.is_train]
    tps = steady_tokens_per_s(rows)
    steps = trainer.state.global_step
    tokens = rows[-1].tokens if rows else None
    if not tps or not steps or not tokens:
        return None
    repeats = step_cost_repeats(steps)
    if not repeats:
        log(f"step cost not measured: {steps} steps (it is measured after {STEPS_PER_STEP_COST_REPEAT} or more)")
        return None
    tokens_per_step = tokens / steps
    try:
        return measure_step_cost(trainer, t.batch_size, tokens_per_step / tps, tokens_per_step, repeats)
    except Exception as exc:  # a measurement must never fail a finished run
        log(f"step cost not measured: {type(exc).__name__}: {exc}")
        return None
