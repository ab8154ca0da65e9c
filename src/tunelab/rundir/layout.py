"""Names in a run directory and the run states: the one place that says where the job writes what.

<run_dir>/
  run.yaml             the resolved run (rundir/config.py)
  status.json          Status, replaced atomically at every change (status.py)
  metrics.jsonl        one MetricRow per log or validation (metrics.py)
  summary.json         Summary, written once the run completed (summary.py)
  packing.json         PackingStats of the dataset the trainer iterates
  stages.json          StageRecord per completed stage of a staged run (stages.py)
  data_order.jsonl     the order each epoch drew
  gpu_samples.jsonl    GpuSample lines (gpu.py)
  checkpoints/epoch_N/ adapter + tokenizer per epoch (checkpoints.py)
  trainer_state/[STAGE/]checkpoint-STEP/  full trainer state; tunelab_counters.json completes it
  eval/<label>/<task>/scores.json   TaskScores (scores.py)
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

STATUS_FILE: Final = "status.json"
SUMMARY_FILE: Final = "summary.json"
METRICS_FILE: Final = "metrics.jsonl"
PACKING_FILE: Final = "packing.json"
STAGES_FILE: Final = "stages.json"
ORDER_FILE: Final = "data_order.jsonl"
SAMPLES_FILE: Final = "gpu_samples.jsonl"
CHECKPOINTS_DIR: Final = "checkpoints"
TRAINER_STATE_DIR: Final = "trainer_state"
COUNTERS_FILE: Final = "tunelab_counters.json"  # the last write of a trainer checkpoint: it completes it
TRAINER_STATE_FILE: Final = "trainer_state.json"  # transformers' own, inside each trainer checkpoint
EVAL_DIR: Final = "eval"
SCORES_FILE: Final = "scores.json"
PROBE_DIR: Final = "probe"
PROBE_RESULTS_FILE: Final = "results.json"  # {shape key: ProbeResult}, what a probe hands back (probe.py)
PROBE_RUN_PREFIX: Final = ".probe-"  # a probe's scratch run is runs/.probe-SHAPE: SHAPE keys its result

ADAPTER_FILES: Final = ("adapter_model.safetensors", "adapter_config.json")
TOKENIZER_FILES: Final = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")

EPOCH_PREFIX: Final = "epoch_"
TRAINER_CHECKPOINT_PREFIX: Final = "checkpoint-"


class RunState(StrEnum):
    """A run's state, as status.json, summary.json and the ledger hold it (the values are the strings on disk)."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


# the states by name, as modules import them
PENDING: Final = RunState.PENDING
RUNNING: Final = RunState.RUNNING
COMPLETED: Final = RunState.COMPLETED
FAILED: Final = RunState.FAILED
INTERRUPTED: Final = RunState.INTERRUPTED

# In status.json's error of a run stopped by Slurm's time-limit warning: execute/failures.py reads it.
SAVED_BEFORE_LIMIT: Final = "saved before the time limit"


def epoch_name(epoch: int) -> str:
    """checkpoints/epoch_N's name (and a summary's checkpoint label)."""
    return f"{EPOCH_PREFIX}{epoch}"


def parse_epoch_name(name: str) -> int | None:
    """N of 'epoch_N'; None for any other name."""
    rest = name.removeprefix(EPOCH_PREFIX)
    return int(rest) if rest != name and rest.isdigit() else None


def trainer_checkpoint_step(name: str) -> int | None:
    """STEP of 'checkpoint-STEP'; None for any other name."""
    rest = name.removeprefix(TRAINER_CHECKPOINT_PREFIX)
    return int(rest) if rest != name and rest.isdigit() else None
