"""Train one run from its run.yaml: TRL SFTTrainer + PEFT LoRA, prompt/completion, loss on the
completion only, optional BFD packing, per-epoch adapter checkpoints, resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

from tunelab.adapter import lora_config
from tunelab.errors import TunelabError
from tunelab.fsutil import atomic_write_json, atomic_write_text, read_jsonl
from tunelab.runconfig import RunConfig
from tunelab.train import quantize
from tunelab.train import status as st
from tunelab.train.checkpoints import (
    COUNTERS_FILE,
    last_complete_checkpoint,
    republish_missing_epochs,
)
from tunelab.train.device import resolve_dtype
from tunelab.train.interrupts import SignalWatch, TrainingStopped, after_stop, make_checkpoint_policy
from tunelab.train.distributed import agree, world
from tunelab.train.metrics import (
    Counters,
    LocalCounts,
    MetricsWriter,
    packing_stats,
    steady_tokens_per_s,
)
from tunelab.train.dataloading import dataloader_args, pipeline_summary, resolve_workers
from tunelab.train.ordering import ORDER_FILE, order_for
from tunelab.train.loop_hooks import make_callback, make_trainer_class
from tunelab.train.loop_hooks import log as _log
from tunelab.train.stages import StageContext
from tunelab.train.summary import run_facts, summarize

# Test-only fault knob: a run whose micro-batch exceeds N fails as a GPU out-of-memory would, so the
# retry policy (halve the micro-batch) can be proven end to end on machines without a GPU.
FAULT_OOM_ENV = "TUNELAB_FAULT_OOM_ABOVE_BATCH"
def _inject_oom_fault(batch_size: int) -> None:
    limit = os.environ.get(FAULT_OOM_ENV, "").strip()
    if limit and batch_size > int(limit):
        import torch

        raise torch.OutOfMemoryError(
            f"CUDA out of memory. Tried to allocate 1.95 GiB (injected: micro-batch {batch_size} > "
            f"{FAULT_OOM_ENV}={limit})")


def _checkpointing_args(enabled: bool) -> dict[str, Any]:
    """Always explicit: TRL's SFTConfig turns activation checkpointing on by default, which costs
    speed and makes a run's throughput depend on a library default. transformers 5 renamed it."""
    from trl import SFTConfig

    name = "activation_checkpointing" if "activation_checkpointing" in SFTConfig.__dataclass_fields__ else (
        "gradient_checkpointing")
    args: dict[str, Any] = {name: enabled}
    if enabled:
        args[f"{name}_kwargs"] = {"use_reentrant": False}
    return args


def build_datasets(cfg: RunConfig, tokenizer) -> tuple[Any, Any | None]:
    """Tokenize train (and validation) with the shared PromptFormat: input_ids + completion_mask."""
    from datasets import Dataset

    from tunelab.data.formatting import prompt_format_of
    from tunelab.data.splits import load_data

    data = load_data(cfg.dataset, cfg.experiment_dir)
    reader = data.reader(cfg.prompt, cfg.system_prompt)
    fmt = prompt_format_of(cfg)

    def encode(split: str) -> Dataset:
        return Dataset.from_list([fmt.encode_example(e, tokenizer) for e in data.examples(split, reader)])

    val = encode("validation") if cfg.training.validation_every_steps else None
    return encode("train"), val


def _step_cost(trainer, t, run_dir: Path) -> dict[str, Any] | None:
    """Fixed vs per-token step cost (for the planner), measured after the last checkpoint is saved."""
    from tunelab.train.step_cost import measure_step_cost

    rows = [r for r in read_jsonl(run_dir / st.METRICS_FILE) if r.get("loss") is not None]
    tps = steady_tokens_per_s(rows)
    steps = trainer.state.global_step
    last = rows[-1] if rows else {}
    if not tps or not steps or not last.get("tokens"):
        return None
    tokens_per_step = last["tokens"] / steps
    try:
        cost = measure_step_cost(trainer, t.batch_size, tokens_per_step / tps, tokens_per_step)
    except Exception as exc:  # a measurement must never fail a finished run
        _log(f"step cost not measured: {type(exc).__name__}: {exc}")
        return None
    if cost is None:
        return None
    cost["tokens_per_step"] = round(tokens_per_step, 2)
    return cost


def _prepare_resume(run_dir: Path, state_dir: Path, ctx: StageContext) -> tuple[Path | None, Counters]:
    """Find the checkpoint to resume from; drop metrics logged after it (they will be redone). A later
    stage with no checkpoint of its own starts where the stage before ended."""
    last = last_complete_checkpoint(state_dir)
    metrics_path = run_dir / st.METRICS_FILE
    start = replace(ctx.counters) if ctx.counters is not None else Counters()
    if not world().is_main:  # the main process tidies the files; the others only read the counters
        return last, Counters(**json.loads((last / COUNTERS_FILE).read_text())) if last else start
    if last is None and ctx.index == 0:
        for stale in (metrics_path, run_dir / st.SUMMARY_FILE, run_dir / st.PACKING_FILE, run_dir / ORDER_FILE):
            stale.unlink(missing_ok=True)
        return None, start
    if last is not None:
        for epoch in republish_missing_epochs(state_dir, run_dir, upto=last, epoch_offset=ctx.epoch_offset):
            _log(f"republished epoch_{epoch} from its trainer checkpoint")
    step = ctx.step_offset + (int(last.name.removeprefix("checkpoint-")) if last else 0)
    kept = [r for r in read_jsonl(metrics_path) if r.get("step", 0) <= step]
    atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
    if last is None:  # a later stage starting afresh: its earlier partial epochs' orders go too
        orders = [r for r in read_jsonl(run_dir / ORDER_FILE) if r.get("epoch", 0) < ctx.epoch_offset]
        atomic_write_text(run_dir / ORDER_FILE, "".join(json.dumps(r) + "\n" for r in orders))
        return None, start
    counters = Counters(**json.loads((last / COUNTERS_FILE).read_text()))  # complete: always there
    return last, counters


def train_run(cfg: RunConfig, stage: StageContext | None = None) -> dict[str, Any]:
    """Train one run in cfg.run_dir (a staged run: one stage of it, train/stages.py); return its summary.
    Raises on failure (status.json says why). In a distributed run every process calls it; only the main
    one writes files and returns the summary (the others return an empty dict)."""
    if cfg.stages:
        from tunelab.train.stages import train_stages

        return train_stages(cfg)
    run_dir = cfg.run_dir
    if cfg.kind != "finetune" or cfg.training is None:
        raise TunelabError("is a control (evaluation only): nothing to train", field=cfg.name)
    ctx = stage or StageContext()
    main = world().is_main
    run_dir.mkdir(parents=True, exist_ok=True)
    state_dir = ctx.state_dir(run_dir)
    resume_from, counters = _prepare_resume(run_dir, state_dir, ctx)
    if main:
        _write_start_status(cfg, run_dir, resume_from, ctx)
    try:
        summary = _train(cfg, run_dir, state_dir, resume_from, counters, ctx)
    except BaseException as exc:
        state = st.INTERRUPTED if isinstance(exc, (KeyboardInterrupt, TrainingStopped)) else st.FAILED
        if main:
            st.write_status(run_dir, state=state, error=f"{type(exc).__name__}: {exc}", finished_at=st.now_iso())
        if main and isinstance(exc, TrainingStopped):
            after_stop(exc, resume_from, run_dir, _log)
        if not isinstance(exc, (KeyboardInterrupt, TunelabError)):
            traceback.print_exc()
        raise
    if not main:
        return summary
    if ctx.name:
        from tunelab.train.stages import record_stage, stages_summary

        record_stage(run_dir, ctx, cfg, summary, summary.pop("counters"))
        _log(f"stage {ctx.name} completed at step {summary['steps']}")
        if not ctx.last:
            return summary
        summary["stages"] = stages_summary(run_dir)
    summary.pop("counters", None)
    atomic_write_json(run_dir / st.SUMMARY_FILE, summary)
    st.write_status(run_dir, state=st.COMPLETED, finished_at=st.now_iso(), step=summary["steps"])
    _log(f"completed: {summary['steps']} steps, final loss {summary['final_loss']}, checkpoints {summary['checkpoints']}")
    return summary


def _write_start_status(cfg: RunConfig, run_dir: Path, resume_from: Path | None, ctx: StageContext) -> None:
    """status.json at a (re)start: a restart is a resume from a checkpoint, counted over the whole run."""
    prev = st.read_status(run_dir)
    started = st.now_iso()
    restarts = (prev.get("restarts", 0) + 1) if resume_from else (prev.get("restarts", 0) if ctx.index else 0)
    stage = {"stage": ctx.name, "stage_index": ctx.index, "stage_count": ctx.count} if ctx.name else {}
    st.write_status(
        run_dir,
        run=cfg.name,
        state=st.RUNNING,
        attempt=cfg.attempt,
        started_at=started,
        first_started_at=prev.get("first_started_at") or started,
        resumed_from=resume_from.name if resume_from else None,
        restarts=restarts,
        error=None,
        requeued_job=None,
        **stage,
    )


def _sft_config(t, state_dir: Path, dtype, validate: bool, strategy: str | None = None):
    import torch
    from trl import SFTConfig

    from tunelab.train.distributed import trainer_args

    return SFTConfig(
        output_dir=str(state_dir),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_steps if t.warmup_steps is not None else t.warmup_ratio,
        weight_decay=t.weight_decay,
        logging_steps=t.logging_steps,
        save_strategy="epoch",
        eval_strategy="steps" if validate else "no",
        eval_steps=t.validation_every_steps,
        seed=t.seed,
        data_seed=t.seed,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu=not torch.cuda.is_available(),
        **_checkpointing_args(t.gradient_checkpointing),
        report_to="none",
        disable_tqdm=True,
        max_length=t.max_seq_len,
        packing=t.packing,
        packing_strategy="bfd",
        completion_only_loss=True,
        **dataloader_args(resolve_workers(t.dataloader_workers, torch.cuda.is_available(), world().size),
                          torch.cuda.is_available()),
        save_only_model=False,
        **trainer_args(strategy, torch.cuda.is_available()),
    )


def build_trainer(cfg: RunConfig, counters: Counters | None = None, callbacks=(),
                  local: LocalCounts | None = None, ctx: StageContext | None = None) -> tuple[Any, Any, Any]:
    """(trainer, train dataset, validation dataset) exactly as `tunelab train` runs them, so tests can
    read what the trainer really feeds (its dataloader) without training."""
    from tunelab.train.distributed import strategy_of

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from transformers.trainer_callback import PrinterCallback

    t = cfg.training
    set_seed(t.seed)
    dtype = resolve_dtype(t.dtype, "cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(cfg.model.path, dtype=dtype, **quantize.load_kwargs(t.quantize, dtype))
    model = quantize.prepare(model, t.quantize, t.gradient_checkpointing)  # QLoRA: peft's k-bit preparation
    train_ds, val_ds = build_datasets(cfg, tokenizer)
    lora = lora_config(t.lora_rank, t.effective_lora_alpha, t.lora_dropout, t.lora_target_modules, t.modules_to_save)
    ctx = ctx or StageContext()
    if ctx.init_adapter is not None:  # a later stage: continue the previous stage's adapter (same shape)
        from peft import PeftModel

        model, lora = PeftModel.from_pretrained(model, str(ctx.init_adapter), is_trainable=True), None
    trainer = make_trainer_class()(
        model=model,
        args=_sft_config(t, ctx.state_dir(cfg.run_dir), dtype, val_ds is not None,
                         strategy_of(cfg.resources.distributed, world().size, torch.cuda.is_available())),
        train_dataset=train_ds,
        eval_dataset=val_ds,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=list(callbacks),
    )
    trainer.counters = counters if counters is not None else Counters()
    trainer.local = local if local is not None else LocalCounts()
    trainer.fixed_order, trainer.order_spec = order_for(t, cfg, trainer.train_dataset), t.order
    trainer.remove_callback(PrinterCallback)  # our callback logs one readable line per step instead
    return trainer, train_ds, val_ds


def _validate_at_end(trainer, run_dir: Path) -> None:
    """Validate at the last step unless that row exists: evaluate() writes it through on_log (writing it
    here as well duplicated it), and the file, not memory, tells a resumed run it is there already. The main
    process (the file's writer) decides; evaluate() is a collective, so every process follows its decision."""
    step = trainer.state.global_step
    missing = world().is_main and not any(r.get("step") == step and r.get("val_loss") is not None
                                          for r in read_jsonl(run_dir / st.METRICS_FILE))
    if agree(missing):
        trainer.evaluate()


def _log_start(cfg: RunConfig, ctx: StageContext, dtype, strategy: str | None, resume_from: Path | None) -> None:
    import torch

    _log(f"run {cfg.name}: model {cfg.model.path}, dtype {dtype}, device {'cuda' if torch.cuda.is_available() else 'cpu'}"
         + (f", {ctx.label()} on {cfg.dataset.name}" if ctx.name else "")
         + (f", {world().size} processes ({strategy})" if strategy else "")
         + (f", resuming from {resume_from.name}" if resume_from else ""))
    if cfg.resources.distributed == "fsdp" and strategy == "ddp":
        _log("FSDP shards on GPUs only (accelerate): these CPU processes train with DDP over gloo")


def _stage_facts(run_dir: Path, ctx: StageContext, writer: MetricsWriter, duration_s: float) -> dict[str, Any]:
    """What stages.json keeps of a stage that just completed (train/stages.py record_stage)."""
    rows = [r for r in read_jsonl(run_dir / st.METRICS_FILE)
            if r.get("loss") is not None and r.get("step", 0) > ctx.step_offset]
    return {"counters": writer.snapshot(), "stage_final_loss": rows[-1]["loss"] if rows else None,
            "stage_duration_s": round(duration_s, 3)}


def _train(cfg: RunConfig, run_dir: Path, state_dir: Path, resume_from: Path | None, counters: Counters,
           ctx: StageContext) -> dict:
    import torch

    from tunelab.compat import quiet_known_library_warnings
    from tunelab.train.distributed import applied_strategy, strategy_of

    quiet_known_library_warnings()
    t = cfg.training
    w = world()
    strategy = strategy_of(cfg.resources.distributed, w.size, torch.cuda.is_available())
    dtype = resolve_dtype(t.dtype, "cuda" if torch.cuda.is_available() else "cpu")
    _log_start(cfg, ctx, dtype, strategy, resume_from)
    writer = MetricsWriter(run_dir / st.METRICS_FILE, counters, {"stage": ctx.name} if ctx.name else None)
    stage_start_s = counters.elapsed_s
    startup: dict[str, float | None] = {}
    local = LocalCounts()
    watch = SignalWatch().install()  # before the slow loading: a signal then stops at the first step
    try:  # the handlers go back even when loading fails
        callbacks = [make_callback(run_dir, writer, startup, local, t.keep_checkpoints, ctx),
                     make_checkpoint_policy(*t.checkpoint_interval, watch, agree if w.size > 1 else None)]
        trainer, train_ds, val_ds = build_trainer(cfg, counters, callbacks, local, ctx)
        pstats = packing_stats(trainer.train_dataset, t.max_seq_len, t.packing)
        if w.is_main:
            atomic_write_json(run_dir / st.PACKING_FILE, pstats)
        _log("dataset: " + ", ".join(f"{k} {v}" for k, v in pstats.items()))
        _inject_oom_fault(t.batch_size)
        trainer.order_log_dir = run_dir if w.is_main else None  # data_order.jsonl: the order each epoch drew
        trainer.order_tag = (ctx.epoch_offset, ctx.name)
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    finally:
        watch.restore()
    if trainer.state.global_step < trainer.state.max_steps:  # only a stop signal ends training early
        raise TrainingStopped(watch.received or signal.SIGTERM, trainer.state.global_step)  # saved: interrupts.py
    if val_ds is not None:
        _validate_at_end(trainer, run_dir)
    if not w.is_main:
        return {}
    elapsed = writer.elapsed()  # training (and its evaluations and saves), before the measurements below
    finish_t0 = time.monotonic()
    # the step cost is a one-device measurement (the planner's unit): a distributed run does not take it
    # (and a staged run's counters span its stages: its steps and tokens do not pair up)
    step_cost = _step_cost(trainer, t, run_dir) if w.size == 1 and not ctx.name else None
    return summarize(run_dir, cfg, {
        "steps": ctx.step_offset + trainer.state.global_step,  # the last logged row's step may be earlier
        "epochs": ctx.epoch_offset + t.epochs,
        **(_stage_facts(run_dir, ctx, writer, elapsed - stage_start_s) if ctx.name else {}),
        "duration_s": round(elapsed, 3),
        "train_time_s": round(elapsed - counters.overhead_s, 3),
        "overhead_s": round(counters.overhead_s, 3),
        "step_cost": step_cost,
        "finish_s": round(time.monotonic() - finish_t0, 3),  # after training: step cost, summary
        "startup_s": round(startup["startup_s"], 3) if startup.get("startup_s") is not None else None,
        "train_examples": len(train_ds),
        "validation_examples": len(val_ds) if val_ds is not None else None,
        "packing": pstats,
        **pipeline_summary(t, torch.cuda.is_available(), w.size, counters.data_wait_s, elapsed - counters.overhead_s),
        **run_facts(trainer, t, dtype, run_dir, w.size, applied_strategy(trainer)),
    })
