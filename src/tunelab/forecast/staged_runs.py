"""Estimates of a staged run: every stage estimated as the run it trains by the one per-run estimator, then combined.
Stages run one after another in one job (each reloads the model), so times add up; memory is the worst stage's, since
the job must fit every stage."""

from __future__ import annotations

from collections.abc import Callable

from tunelab.catalog import GPU
from tunelab.forecast.runs import RunLengths, estimate_run, slurm_time_limit
from tunelab.ledger.history import HistoryRun
from tunelab.rundir.config import RunConfig
from tunelab.rundir.estimate import RunEstimate, SourceKind, StageEstimate
from tunelab.spec.resources import Strategy

Lengths = Callable[[RunConfig], RunLengths]  # train and validation token lengths of a run, its kept logits


def stage_runs(cfg: RunConfig) -> list[RunConfig]:
    """The run as each of its stages trains it ([the run] when it has no stages)."""
    return [cfg.stage_config(i) for i in range(len(cfg.stages))] if cfg.stages else [cfg]


def estimate_any_run(cfg: RunConfig, gpu: GPU | None, lengths: Lengths, history: list[HistoryRun],
                     cpu_threads: int | None = None) -> RunEstimate:
    """The run's estimate: estimate_run on the run itself, or on each stage and combined."""
    parts = []
    for part in stage_runs(cfg):
        got = lengths(part)
        parts.append(estimate_run(part, gpu, got.train, got.validation, history, cpu_threads, stage=bool(cfg.stages),
                                  kept=got.kept))
    return combine_stages(cfg, parts) if cfg.stages else parts[0]


_KIND_ORDER = ["", *SourceKind]


def _worst(parts: list[RunEstimate]) -> RunEstimate:
    """The stage whose micro-batch needs the most memory (by predicted peak, else by tokens per micro-batch)."""
    if all(p.peak_memory_gib is not None for p in parts):
        return max(parts, key=lambda p: p.peak_memory_gib or 0.0)
    return max(parts, key=lambda p: p.tokens_per_microbatch)


def _time_source(cfg: RunConfig, parts: list[RunEstimate]) -> str:
    sources = [p.time_source for p in parts]
    if len(set(sources)) == 1:
        return f"sum of {len(parts)} stages; each: {sources[0]}"
    return "sum of stages; " + "; ".join(f"{s.name}: {src}" for s, src in zip(cfg.stages, sources))


def combine_stages(cfg: RunConfig, parts: list[RunEstimate]) -> RunEstimate:
    """One estimate of a staged run: steps, tokens and time summed, the worst stage's memory, each stage's kept."""
    worst = _worst(parts)
    times = [p.seconds for p in parts]
    seconds = round(sum(t for t in times if t is not None), 1) if None not in times else None
    train_s = [p.train_tokens / p.tokens_per_s for p in parts if p.tokens_per_s]
    train_total_s = sum(train_s)
    tps = sum(p.train_tokens for p in parts) / train_total_s if len(train_s) == len(parts) and train_total_s else None
    startups = [p.startup_s for p in parts]
    gpu_hours = [p.gpu_hours for p in parts]
    strategy = Strategy.FSDP if any(p.strategy == Strategy.FSDP for p in parts) else worst.strategy  # the job picks one
    where = next(s.name for s, p in zip(cfg.stages, parts) if p is worst)
    return RunEstimate(
        run=cfg.name,
        packed=worst.packed,
        micro_batch=worst.micro_batch,
        gradient_accumulation_steps=worst.gradient_accumulation_steps,
        tokens_per_microbatch=worst.tokens_per_microbatch,
        steps=sum(p.steps for p in parts),
        tokens_per_epoch=sum(p.tokens_per_epoch for p in parts),
        peak_memory_gib=worst.peak_memory_gib,
        gpu_memory_gib=worst.gpu_memory_gib,
        memory_source=f"{worst.memory_source}; stage {where}, the largest of {len(parts)} stages",
        tokens_per_s=round(tps, 1) if tps else None,
        startup_s=round(sum(s for s in startups if s is not None), 1) if None not in startups else None,
        seconds=seconds,
        time_source=_time_source(cfg, parts),
        gpu_hours=round(sum(g for g in gpu_hours if g is not None), 4) if None not in gpu_hours else None,
        slurm_time_limit=slurm_time_limit(seconds) if seconds is not None else None,
        processes=worst.processes,
        nodes=worst.nodes,
        strategy=strategy,
        effective_batch=worst.effective_batch,
        scaling_efficiency=worst.scaling_efficiency,
        train_tokens=sum(p.train_tokens for p in parts),
        # the weakest stage's kind prices the whole (its interval is the widest)
        time_kind=max((p.time_kind for p in parts), key=lambda k: _KIND_ORDER.index(k)) if seconds is not None else "",
        startup_kind=next((p.startup_kind for p in parts if p.startup_kind), ""),
        time_spread=max(p.time_spread for p in parts),
        seconds_raw=seconds,
        startup_raw_s=round(sum(s for s in startups if s is not None), 1) if None not in startups else None,
        stages=[StageEstimate(name=s.name, dataset=s.dataset.name, steps=p.steps, train_tokens=p.train_tokens,
                              tokens_per_microbatch=p.tokens_per_microbatch, peak_memory_gib=p.peak_memory_gib,
                              seconds=p.seconds, time_source=p.time_source) for s, p in zip(cfg.stages, parts)],
    )
