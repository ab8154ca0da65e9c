"""training.levers: auto — per run, settings that keep the experiment the same and cut its time.

Each lever is one choice with its value, predicted effect and source (`LeverChoice`, in run.yaml's estimate): the
micro-batch × accumulation split and checkpointing (forecast/split.py), the checkpoint frequency, packing (proposed
only), dataloader workers and the evaluation batch. A field the spec sets always wins; a lever's choice is written into
the run's training, so run.yaml carries it."""

from __future__ import annotations

import math
from pathlib import Path

from tunelab.catalog import GPU, resolve_architecture
from tunelab.estimate.memory import DTYPE_BYTES
from tunelab.forecast.evalrun import EVAL_BATCH
from tunelab.forecast.savecost import SaveCost, save_cost
from tunelab.forecast.split import (
    Costs,
    Lengths,
    choose_split,
    fixed_split,
    processes_of,
    signed_seconds,
    target_effective_batch,
    with_training,
)
from tunelab.fsutil import human_seconds
from tunelab.ledger import history
from tunelab.models.vlm import is_vision_language
from tunelab.rundir.config import RunConfig
from tunelab.rundir.estimate import LeverChoice, LeverSource
from tunelab.spec import ExperimentSpec, TrainingConfig
from tunelab.spec.stages import split_stage_factor

MTBI_SCHEDULER_S = 8 * 3600.0  # assumed: mean time between interruptions (preemption, node failure) of a job
MTBI_LOCAL_S = 24 * 3600.0  # assumed: the same for a local process
PACKING_GAIN = 0.05  # packing is proposed when it raises the non-pad share of tokens by at least this
EVAL_BATCH_LIMIT = 256


def levers_on(t: TrainingConfig, deadline_s: float | None) -> bool:
    """auto when asked, or by default when the sweep has a deadline."""
    return t.levers == "auto" or (t.levers is None and deadline_s is not None)


def explicit_fields(spec: ExperimentSpec, cfg: RunConfig) -> frozenset[str]:
    """Training fields the user set: written in `training:` or swept as factors (they always win)."""
    swept = {k for k in cfg.factors if k in TrainingConfig.model_fields and not split_stage_factor(k)}
    return frozenset(spec.training.model_fields_set) | swept


def resolve_effective_batches(runs: list[RunConfig], spec: ExperimentSpec, spec_path: Path, cuda: bool) -> None:
    """training.effective_batch → a micro-batch × accumulation that holds it, for runs without levers (their
    micro-batch as given); levers choose their own split later. Errors name the file and the field."""
    for i, cfg in enumerate(runs):
        t = cfg.training
        if t is None or t.effective_batch is None or cfg.stages:
            continue
        explicit = explicit_fields(spec, cfg)
        nproc = cfg.resources.processes_per_run(1 if cuda else 0)
        target = target_effective_batch(t, nproc, explicit, spec_path, cfg.name)
        micro, accum = fixed_split(t, target, nproc, explicit, spec_path, cfg.name)
        runs[i] = with_training(cfg, batch_size=micro, gradient_accumulation_steps=accum)


def choose_levers(runs: list[RunConfig], spec: ExperimentSpec, spec_path: Path, gpu: GPU | None,
                  deadline_s: float | None, lengths: Lengths, cpu_threads: int | None = None
                  ) -> dict[str, list[LeverChoice]]:
    """The plan's step: levers for every run that has them on, priced on `gpu` with the user's history."""
    from tunelab.execute.executors import executor_class

    if not any(r.training is not None and levers_on(r.training, deadline_s) for r in runs):
        return {}
    costs = Costs(gpu, history.load(), lengths, cpu_threads)
    return apply_levers(runs, spec, spec_path, costs, deadline_s, executor_class(spec.resources.executor).detached)


def apply_levers(runs: list[RunConfig], spec: ExperimentSpec, spec_path: Path, costs: Costs,
                 deadline_s: float | None, detached: bool) -> dict[str, list[LeverChoice]]:
    """Write every lever-on run's choices into its training (in place); returns each run's choices."""
    out: dict[str, list[LeverChoice]] = {}
    for i, cfg in enumerate(runs):
        if cfg.training is None or not levers_on(cfg.training, deadline_s):
            continue
        if cfg.stages:
            out[cfg.name] = [LeverChoice(lever="all", value="off", applied=False, source=LeverSource.SPEC,
                                         why="a staged run keeps each stage's settings: levers choose per run")]
            continue
        runs[i], out[cfg.name] = run_levers(cfg, spec, spec_path, costs, detached)
    return out


def run_levers(cfg: RunConfig, spec: ExperimentSpec, spec_path: Path, costs: Costs, detached: bool
               ) -> tuple[RunConfig, list[LeverChoice]]:
    """One run's levers in dependency order: split and checkpointing, then checkpoint frequency, then the shown."""
    assert cfg.training is not None
    explicit = explicit_fields(spec, cfg)
    target = target_effective_batch(cfg.training, processes_of(cfg, costs.gpu), explicit, spec_path, cfg.name)
    chosen, choices = choose_split(cfg, costs, target, explicit)
    time = costs.time(chosen)
    save = save_cost(chosen, costs.gpu, costs.history)
    chosen, every = checkpoint_choice(chosen, cfg, time.seconds, time.steps, detached, explicit, save)
    choices.append(every)
    packing = packing_choice(chosen, costs, explicit, time.seconds)
    if packing is not None:
        choices.append(packing)
    choices += [workers_choice(chosen, explicit, costs.gpu is not None), eval_batch_choice(chosen, costs)]
    return chosen, choices


def mid_epoch_saves(t: TrainingConfig, train_s: float | None, steps: int) -> int:
    """Mid-epoch saves checkpoint_every makes over a run of `steps` optimizer steps (and `train_s` seconds)."""
    every_steps, every_s = t.checkpoint_interval
    if every_steps:
        return steps // every_steps
    return int(train_s // every_s) if every_s and train_s else 0


def checkpoint_choice(cfg: RunConfig, spec_cfg: RunConfig, train_s: float | None, steps: int, detached: bool,
                      explicit: frozenset[str], save: SaveCost) -> tuple[RunConfig, LeverChoice]:
    """Young/Daly: save every sqrt(2 × save cost × MTBI), the least saves plus lost work; short runs: epochs."""
    assert cfg.training is not None and spec_cfg.training is not None
    cost = save.seconds
    mtbi = MTBI_SCHEDULER_S if detached else MTBI_LOCAL_S
    every = math.sqrt(2 * cost * mtbi)
    base_saves = mid_epoch_saves(spec_cfg.training, train_s, steps)
    basis = f"{save.source}, an interruption every {human_seconds(mtbi)} (assumed)"
    if "checkpoint_every" in explicit:
        return cfg, LeverChoice(lever="checkpoint_every", value=str(cfg.training.checkpoint_every), applied=True,
                                source=LeverSource.SPEC, seconds_delta=0.0,
                                effect=f"{base_saves} mid-epoch saves ≈ {human_seconds(base_saves * cost)}",
                                why="checkpoint_every is set in the spec: it wins")
    if train_s is None or every >= train_s:
        chosen, value = None, "epoch ends only"
        why = (f"the run ({human_seconds(train_s)}) is shorter than the optimal interval "
               f"{human_seconds(every)}" if train_s is not None else "no time predicted: epoch ends only")
    else:
        chosen = f"{max(1, round(every / 60))}min"
        value, why = chosen, f"optimal interval {human_seconds(every)} (Young/Daly)"
    new = with_training(cfg, checkpoint_every=chosen)
    assert new.training is not None
    saves = mid_epoch_saves(new.training, train_s, steps)
    lost = f"; an interruption loses ≈ {human_seconds(min(every, train_s) / 2)}" if train_s is not None else ""
    return new, LeverChoice(
        lever="checkpoint_every", value=value, applied=True,
        source=LeverSource.HISTORY if save.measured else LeverSource.ASSUMED,
        seconds_delta=round((saves - base_saves) * cost, 1),
        effect=f"{saves} mid-epoch saves ≈ {human_seconds(saves * cost)} (spec's: {base_saves}){lost}",
        why=f"{why}; {basis}")


def packing_choice(cfg: RunConfig, costs: Costs, explicit: frozenset[str], train_s: float | None
                   ) -> LeverChoice | None:
    """Packing with per-sequence attention, proposed where it raises the non-pad share: never applied, since it changes
    what a micro-batch counts (the effective batch and the loss's weighting)."""
    t = cfg.training
    assert t is not None
    if t.packing or "packing" in explicit or t.order != "shuffled" or is_vision_language(cfg.model.path):
        return None
    lengths = costs.lengths(cfg)[0]
    real = sum(min(n, t.max_seq_len) for n in lengths)
    padded = costs.time(cfg).tokens_per_epoch
    share = real / max(padded, 1)
    if share > 1 - PACKING_GAIN:
        return None
    packed = costs.time(with_training(cfg, packing=True))
    delta = round(packed.seconds - train_s, 1) if packed.seconds is not None and train_s is not None else None
    when = f"{signed_seconds(delta)} training" if delta is not None else "time not predicted"
    return LeverChoice(
        lever="packing", value="on (proposed, not applied)", applied=False, source=LeverSource.SIMULATED,
        seconds_delta=delta, effect=f"non-pad tokens {share:.0%} → 100 %; {when}",
        why="changes results: a micro-batch would count packed rows of several examples, so examples per "
            "optimizer step and the loss's weighting change; set training.packing: true to take it")


def workers_choice(cfg: RunConfig, explicit: frozenset[str], gpu: bool) -> LeverChoice:
    """Dataloader workers stay the job's choice from the CPUs it really has: shown, its data wait the check."""
    t = cfg.training
    assert t is not None
    if "dataloader_workers" in explicit:
        return LeverChoice(lever="dataloader_workers", value=str(t.dataloader_workers), applied=True,
                           source=LeverSource.SPEC, why="dataloader_workers is set in the spec: it wins")
    return LeverChoice(lever="dataloader_workers", value="from the job's CPUs" if gpu else "0 (CPU)",
                       applied=True, source=LeverSource.JOB, effect="data wait measured in the job (the report "
                       "flags over 5 %)", why="resolved where the job runs, from the CPUs it has")


def eval_batch_choice(cfg: RunConfig, costs: Costs) -> LeverChoice:
    """The largest evaluation batch whose weights + KV cache + logits fit the GPU (analytic, assumed); shown
    beside the batch evaluation uses, which no run.yaml field sets yet."""
    if costs.gpu is None:
        return LeverChoice(lever="eval_batch", value=str(EVAL_BATCH), applied=False, source=LeverSource.ASSUMED,
                           why="evaluation's batch; memory is not modelled on CPU")
    t = cfg.training
    assert t is not None
    arch = resolve_architecture(cfg.model.path)
    width = DTYPE_BYTES.get(t.planned_dtype(costs.gpu.compute_capability), 2)
    seq = t.max_seq_len + cfg.eval.max_tokens
    kv = 2 * arch.layers * arch.kv_heads * arch.head_dim * width * seq
    room = costs.gpu.memory_gib * 0.85 * 2**30 - arch.parameters * width
    per_row = kv + arch.vocab * 4 * 2
    fit = max(0, min(EVAL_BATCH_LIMIT, int(room // per_row))) if room > 0 else 0
    best = 1 << (fit.bit_length() - 1) if fit else 0
    return LeverChoice(lever="eval_batch", value=f"{best} fits; evaluation uses {EVAL_BATCH}", applied=False,
                       source=LeverSource.ASSUMED, why="weights + KV cache of max_seq_len + max_tokens per row + "
                       "fp32 logits within 85 % of the GPU (analytic); no run.yaml field sets the eval batch yet")
