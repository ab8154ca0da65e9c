"""The run directory as a typed contract between the job that writes it and everyone who reads it: the training job is
the only writer of its files (evaluation of eval/*/scores.json), the coordinator only reads. Each file's name is in
`layout`, its record and its read and write functions in one module; records keep the exact JSON keys on disk, so
experiments written before stay readable."""

from tunelab.rundir.checkpoints import Counters, complete_epochs, epoch_dir, is_complete_checkpoint
from tunelab.rundir.layout import (
    ADAPTER_FILES,
    CHECKPOINTS_DIR,
    COMPLETED,
    FAILED,
    INTERRUPTED,
    METRICS_FILE,
    ORDER_FILE,
    PACKING_FILE,
    PENDING,
    RUNNING,
    SAMPLES_FILE,
    STAGES_FILE,
    STATUS_FILE,
    SUMMARY_FILE,
    TRAINER_STATE_DIR,
)
from tunelab.rundir.metrics import MetricRow, read_metrics
from tunelab.rundir.stages import StageRecord, read_stage_records
from tunelab.rundir.status import Status, now_iso, read_iso, read_status, write_status
from tunelab.rundir.summary import PackingStats, StepCost, Summary, read_summary

__all__ = [
    "ADAPTER_FILES", "CHECKPOINTS_DIR", "COMPLETED", "FAILED", "INTERRUPTED", "METRICS_FILE", "ORDER_FILE",
    "PACKING_FILE", "PENDING", "RUNNING", "SAMPLES_FILE", "STAGES_FILE", "STATUS_FILE", "SUMMARY_FILE",
    "TRAINER_STATE_DIR", "Counters", "MetricRow", "PackingStats", "StageRecord", "Status", "StepCost", "Summary",
    "complete_epochs", "epoch_dir", "is_complete_checkpoint", "now_iso", "read_iso", "read_metrics",
    "read_stage_records", "read_status", "read_summary", "write_status",
]
