"""The retry policy, shared by the local and the Slurm executor.

A retry never edits a run's files in place: it writes a NEW run.yaml with attempt + 1 (and the
changed fields), then the executor starts the run again from that file. The reason goes to the
ledger with the attempt.

- OOM (GPU or host): micro-batch (`training.batch_size`) divided by its smallest factor f (halved
  when even) and `gradient_accumulation_steps` multiplied by f (shrink_micro_batch); impossible at
  micro-batch 1. Keeping b x g is enough for the retried run to equal the original in examples per
  optimizer step and in schedule, whether or not b x g divides the N examples (or packed
  sequences) of an epoch, because of what the HF Trainer (transformers >= 5.23, pinned) does:
  micro-batch i holds examples [i*b, (i+1)*b) of the epoch's order (a seeded permutation of N,
  independent of b); optimizer step k accumulates micro-batches [k*g, (k+1)*g), i.e. examples
  [k*b*g, (k+1)*b*g), the last window being partial (it still steps, on fewer micro-batches);
  steps per epoch = ceil(ceil(N/b)/g) = ceil(N/(b*g)); the loss is normalized by the tokens of
  the whole window (num_items_in_batch). So every window holds the same examples for (b, g) and
  (b/f, g*f): same steps per epoch, max_steps, warm-up and LR at each step, and the gradient is
  equal up to float summation order. Only the fractional `epoch` HF logs between epoch ends
  (micro-batches done / micro-batches per epoch) differs slightly. tests/unit/test_retry.py checks
  this against the Trainer's own step arithmetic, tests/e2e/test_retry_resume.py end to end.
  Resume or restart? Checkpoints are taken at epoch ends, where no window is pending, so resuming
  from the last checkpoint with the new micro-batch is exact; the HF Trainer restores the old
  micro-batch from a checkpoint only with auto_find_batch_size, which we never set. A checkpoint
  not at an epoch boundary (someone else's) is dropped and the run restarts from step 0.
- TIMEOUT: resume from the last checkpoint with the time limit doubled (the limit was short) where the
  executor runs jobs under one (Executor.longer_time_limit; Slurm: resources.slurm.time_limit).
- PREEMPTED, NODE_FAIL: resume from the last checkpoint, same limit. A preemption is the scheduler's
  choice, not the run's failure: its retry spends none of the budget (the run may be preempted any number
  of times; each costs the work since its last checkpoint). A start Slurm itself requeued under the same id
  is no retry at all (execute/requeues.py).
- CANCELLED (a person did it), FAILED with an exit code (a bug or bad data: the same again would
  fail the same way): no automatic retry.
At most `resources.max_retries` automatic retries per run (attempt - 1, less the preemptions' retries).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass

from tunelab.execute.executor import Executor
from tunelab.execute.failures import NODE_FAIL, OOM, PREEMPTED, TIMEOUT, Failure
from tunelab.rundir import CHECKPOINTS_DIR, TRAINER_STATE_DIR
from tunelab.rundir.checkpoints import last_trainer_checkpoint
from tunelab.rundir.config import RunConfig, save_run_config
from tunelab.rundir.layout import TRAINER_STATE_FILE
from tunelab.rundir.stages import current_stage, current_state_dir, restart_current_stage
from tunelab.spec import SlurmSpec, TrainingConfig


@dataclass
class RetryDecision:
    retry: bool
    reason: str
    config: RunConfig | None = None  # the new run.yaml's content (attempt + 1)
    restart: bool = False  # drop trainer_state/ and start from step 0


def shrink_micro_batch(batch_size: int, accumulation: int) -> tuple[int, int]:
    """The OOM retry's (micro-batch, accumulation): b/f and g*f, f the smallest factor of b > 1.
    The product is unchanged, which keeps every optimizer step's examples (module docstring)."""
    f = next((f for f in range(2, batch_size + 1) if batch_size % f == 0), batch_size)
    return batch_size // f, accumulation * f


def decide(cfg: RunConfig, failure: Failure, executor: type[Executor] | None = None,
           preempted: int = 0) -> RetryDecision:
    """What to do after a run's job ended with `failure` (pure: reads the run dir, writes nothing).
    executor: the one the job ran on, asked for the longer time limit a TIMEOUT retry gets (None: none).
    preempted: the run's earlier attempts that ended PREEMPTED (their retries spent nothing)."""
    max_retries = cfg.resources.max_retries
    if not failure.retryable:
        return RetryDecision(False, f"{failure.kind}: not retried automatically ({failure.detail})")
    spent = cfg.attempt - 1 - preempted
    if failure.kind != PREEMPTED and spent >= max_retries:
        return RetryDecision(False, f"{failure.kind}: gave up after {spent} retries "
                                    f"(resources.max_retries = {max_retries})")
    if cfg.training is None:
        return RetryDecision(False, "a control has no training to retry")
    update: dict = {"attempt": cfg.attempt + 1}
    restart = False
    if failure.kind == OOM:
        stage = current_stage(cfg)  # a staged run: only the stage that ran out of memory changes
        t = cfg.stages[stage].training if stage is not None else cfg.training
        if t.batch_size <= 1:
            return RetryDecision(False, "oom at micro-batch 1: cannot shrink further; needs more memory or a "
                                        "shorter max_seq_len")
        b, g = shrink_micro_batch(t.batch_size, t.gradient_accumulation_steps)
        new_t = type(t).model_validate({**t.model_dump(), "batch_size": b, "gradient_accumulation_steps": g})
        if stage is None:
            update["training"] = new_t
        else:
            update["stages"] = [s.model_copy(update={"training": new_t}) if i == stage else s
                                for i, s in enumerate(cfg.stages)]
        restart = not _checkpoint_at_epoch_boundary(cfg)
        where = f"stage {cfg.stages[stage].name}: " if stage is not None else ""
        then = "resume from the last checkpoint"
        if restart:
            then = "restart the stage from its first step" if stage is not None else "restart from step 0"
        reason = (f"oom: {where}batch_size {t.batch_size}->{b}, gradient_accumulation_steps "
                  f"{t.gradient_accumulation_steps}->{g} (examples per optimizer step and process "
                  f"{t.batch_size * t.gradient_accumulation_steps} unchanged, so the effective batch too); {then}")
    elif failure.kind == TIMEOUT:
        reason = "timeout: resume from the last checkpoint"
        longer = executor.longer_time_limit(cfg) if executor is not None else None
        if longer is not None:
            update["resources"], change = longer
            reason += f" with {change}"
    elif failure.kind == PREEMPTED:
        reason = f"{failure.kind}: resume from the last checkpoint (a preemption spends no retry)"
    elif failure.kind == NODE_FAIL:
        reason = f"{failure.kind}: resume from the last checkpoint"
    else:  # pragma: no cover - RETRYABLE lists the kinds above
        return RetryDecision(False, failure.kind)
    new_cfg = RunConfig.model_validate({**cfg.model_dump(), **{k: v for k, v in update.items()}})
    return RetryDecision(True, f"attempt {cfg.attempt + 1}: {reason}", new_cfg, restart)


def _checkpoint_at_epoch_boundary(cfg: RunConfig) -> bool:
    last = last_trainer_checkpoint(current_state_dir(cfg))
    if last is None:
        return True  # nothing to resume: starting over is the same
    try:
        epoch = json.loads((last / TRAINER_STATE_FILE).read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return False
    return abs(epoch - round(epoch)) < 1e-6


def apply(decision: RetryDecision) -> RunConfig:
    """Write the new run.yaml (and drop trainer state when the retry must restart)."""
    assert decision.retry and decision.config is not None
    cfg = decision.config
    if decision.restart:
        if cfg.stages:  # the stages already complete stay as they are
            restart_current_stage(cfg)
        else:
            shutil.rmtree(cfg.run_dir / TRAINER_STATE_DIR, ignore_errors=True)
            shutil.rmtree(cfg.run_dir / CHECKPOINTS_DIR, ignore_errors=True)
    save_run_config(cfg)
    return cfg


def _without_retry_changes(cfg: RunConfig) -> RunConfig:
    """The run with what a retry may change set aside: the attempt, every training's micro-batch and
    accumulation, the Slurm time limit (and a `slurm` block that only a retry's time limit put there), and
    the estimate (informational: it moves with history, not a change of the run)."""
    def neutral(t: TrainingConfig) -> TrainingConfig:
        return t.model_copy(update={"batch_size": 1, "gradient_accumulation_steps": 1})

    slurm = cfg.resources.slurm
    if slurm is not None:
        slurm = slurm.model_copy(update={"time_limit": None})
        slurm = None if slurm == SlurmSpec() else slurm
    return cfg.model_copy(update={
        "attempt": 1, "estimate": None, "training": neutral(cfg.training) if cfg.training is not None else None,
        "stages": [st.model_copy(update={"training": neutral(st.training)}) for st in cfg.stages],
        "resources": cfg.resources.model_copy(update={"slurm": slurm})})


def differs_only_by_retries(old: RunConfig, new: RunConfig) -> bool:
    """True when an existing run.yaml (`old`, attempt > 1) is the freshly designed one (`new`) plus
    what retries changed: scaffolding again must keep it, or the next job would OOM/time out again."""
    return old.attempt > 1 and _without_retry_changes(old) == _without_retry_changes(new)
