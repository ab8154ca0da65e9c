"""summary.json of a finished run: results from its metrics rows (as the job wrote them) plus what the run ran on."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.host import threads
from tunelab.host.adapt import taken
from tunelab.host.cpuload import LoadWindow
from tunelab.host.machine import cpu_model
from tunelab.models.attention import VARLEN_IMPLEMENTATION
from tunelab.models.varlen import kernels_used
from tunelab.rundir import layout
from tunelab.rundir.checkpoints import complete_epochs
from tunelab.rundir.config import RunConfig
from tunelab.rundir.metrics import MetricRow, steady_tokens_per_s
from tunelab.rundir.summary import PackingStats, ProcessMemory, StepCost, Summary, ThreadUse
from tunelab.spec import Strategy, TrainingConfig
from tunelab.train.dataloading import Pipeline
from tunelab.train.distributed import local_processes
from tunelab.train.metrics import process_started_at, started_warm, warm_imports_s


@dataclass(frozen=True)
class Timing:
    """Where a run's (or a stage's) time went, from its counters."""

    duration_s: float
    overhead_s: float
    finish_s: float
    startup_s: float | None
    saves: int = 0  # checkpoint saves, whose time is part of overhead_s
    save_s: float = 0.0  # their seconds together


@dataclass(frozen=True)
class StageFacts:
    """What a staged run's stage adds to the summary (its last stage's land in summary.json)."""

    final_loss: float | None
    duration_s: float


def _losses_and_tokens(rows: list[MetricRow]) -> dict[str, Any]:
    train = [r.loss for r in rows if r.loss is not None]
    val = [r.val_loss for r in rows if r.val_loss is not None]
    last = rows[-1] if rows else MetricRow()
    tps = steady_tokens_per_s(rows)
    nonpad_frac = (last.nonpad_tokens or 0) / last.tokens if last.tokens else None
    return {
        "final_loss": train[-1] if train else None, "best_loss": min(train) if train else None,
        "final_val_loss": val[-1] if val else None, "best_val_loss": min(val) if val else None,
        "tokens": last.tokens, "nonpad_tokens": last.nonpad_tokens,
        "nonpad_fraction": round(nonpad_frac, 4) if nonpad_frac is not None else None,
        "tokens_per_s": round(tps, 2) if tps else None,
        "nonpad_tokens_per_s": round(tps * nonpad_frac, 2) if tps and nonpad_frac else None,
        "peak_memory_gib": max((r.peak_memory_gib for r in rows if r.peak_memory_gib is not None), default=None),
        "memory_kind": last.memory_kind,
    }


def summarize(run_dir: Path, cfg: RunConfig, rows: list[MetricRow], *, steps: int, epochs: int, timing: Timing,
              train_examples: int, validation_examples: int | None, packing: PackingStats, pipeline: Pipeline,
              facts: RunFacts, step_cost: StepCost | None, stage: StageFacts | None,
              load: LoadWindow | None = None) -> Summary:
    """Loss, tokens, throughput and the worst process's peak, from the rows the job holds, with what it ran on."""
    return Summary(
        run=cfg.name, state=layout.COMPLETED, attempt=cfg.attempt, steps=steps,
        **_losses_and_tokens(rows),
        checkpoints=[layout.epoch_name(e) for e in complete_epochs(run_dir)],
        epochs=epochs,
        stage_final_loss=stage.final_loss if stage else None,
        stage_duration_s=round(stage.duration_s, 3) if stage else None,
        duration_s=round(timing.duration_s, 3), train_time_s=round(timing.duration_s - timing.overhead_s, 3),
        overhead_s=round(timing.overhead_s, 3), step_cost=step_cost, finish_s=round(timing.finish_s, 3),
        saves=timing.saves, save_s=round(timing.save_s / timing.saves, 4) if timing.saves else None,
        startup_s=round(timing.startup_s, 3) if timing.startup_s is not None else None,
        train_examples=train_examples, validation_examples=validation_examples, packing=packing,
        dataloader_workers=pipeline.workers.count, dataloader_workers_source=pipeline.workers.source,
        pin_memory=pipeline.pin_memory, data_wait_s=pipeline.data_wait_s,
        data_wait_fraction=pipeline.data_wait_fraction,
        world_size=facts.world_size, distributed=facts.distributed, processes=facts.processes,
        effective_batch_size=facts.effective_batch_size, trainable_params=facts.trainable_params,
        total_params=facts.total_params, device=facts.device, gpu_memory_total_gib=facts.gpu_memory_total_gib,
        cpu_threads=facts.cpu_threads, cpu_model=facts.cpu_model, threads=facts.threads, dtype=facts.dtype, activation_checkpointing=facts.activation_checkpointing,
        attention=facts.attention, attention_kernel=facts.attention_kernel, restarts=facts.restarts, versions=facts.versions, pid=facts.pid,
        load=load, process_started_at=facts.process_started_at, started_warm=facts.started_warm or None,
        warm_imports_s=round(facts.warm_imports_s, 3) if facts.warm_imports_s is not None else None,
    )


@dataclass(frozen=True)
class RunFacts:
    """What the run ran on: processes, batch, parameters, device, library versions."""

    world_size: int
    distributed: Strategy | None
    effective_batch_size: int
    trainable_params: int
    total_params: int
    device: str
    gpu_memory_total_gib: float | None
    cpu_threads: int
    dtype: str
    activation_checkpointing: bool
    attention: str
    attention_kernel: str | None
    restarts: int
    versions: dict[str, str]
    pid: int
    processes: list[ProcessMemory] | None = None
    threads: ThreadUse | None = None
    process_started_at: str | None = None  # this process's creation (ISO 8601 UTC): where its dispatch ends
    started_warm: bool = False  # forked from a warm process (train/warm.py): its start-up holds no imports
    warm_imports_s: float | None = None  # what that process's imports took (the start-up this job skipped)
    cpu_model: str | None = None  # the CPU's model where it trained on a CPU (host/machine.py)


def thread_use(torch_threads: int) -> ThreadUse:
    """This process's threads as the rule chose them (tunelab/host/threads.py), with the count torch really runs."""
    plan = threads.decide(local_processes())
    adapted = taken()
    return ThreadUse(torch=torch_threads, cores_given=plan.cores_given, processes=plan.processes,
                     source=plan.source, limit=plan.limit, adapted_from=adapted.planned if adapted else None,
                     others_cores=adapted.others_cores if adapted else None)


def run_facts(trainer: Any, t: TrainingConfig, dtype: Any, restarts: int, world_size: int,
              strategy: Strategy | None, processes: list[ProcessMemory] | None = None) -> RunFacts:
    import peft
    import torch
    import transformers
    import trl

    cuda = torch.cuda.is_available()
    trainable, total = trainer.model.get_nb_trainable_parameters()
    return RunFacts(
        world_size=world_size, distributed=strategy, effective_batch_size=t.effective_batch_size(world_size),
        trainable_params=int(trainable), total_params=int(total),
        device=torch.cuda.get_device_name(0) if cuda else "cpu",
        gpu_memory_total_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 2) if cuda else None,
        cpu_threads=torch.get_num_threads(), dtype=str(dtype).removeprefix("torch."),
        cpu_model=None if cuda else cpu_model(),
        activation_checkpointing=t.gradient_checkpointing,
        attention=str(trainer.model.config._attn_implementation).replace(VARLEN_IMPLEMENTATION, "varlen"),
        attention_kernel=kernels_used(), restarts=restarts,
        versions={"torch": torch.__version__, "transformers": transformers.__version__,
                  "peft": peft.__version__, "trl": trl.__version__},
        pid=os.getpid(), processes=processes, threads=thread_use(torch.get_num_threads()),
        process_started_at=process_started_at(), started_warm=started_warm(), warm_imports_s=warm_imports_s())
