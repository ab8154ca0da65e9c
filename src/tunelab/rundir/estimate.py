"""The planner's estimate of one run, as run.yaml carries it (`estimate:`): written by scaffold from the plan
(estimate/runs.py makes it) and read back, by field, by the SLURM time limit, local placement, node packing,
the watch view, the history and the report. One model for writer and readers, so a renamed field fails mypy
instead of reading as None. Files from older versions load: missing keys take the defaults, unknown keys are
kept (and written back)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from tunelab.spec.resources import Strategy


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class StageEstimate(_Record):
    """One stage's share of its run's estimate (run.yaml's estimate.stages)."""

    name: str = ""
    dataset: str = ""
    steps: int = 0
    train_tokens: int = 0
    tokens_per_microbatch: int = 0
    peak_memory_gib: float | None = None
    seconds: float | None = None
    time_source: str = ""


class RunEstimate(_Record):
    """Steps, tokens, peak memory, time and a SLURM limit for one run, each with its source."""

    run: str = ""
    packed: bool = False
    micro_batch: int = 0
    gradient_accumulation_steps: int = 1
    tokens_per_microbatch: int = 0
    steps: int = 0
    tokens_per_epoch: int = 0  # a staged run: one epoch of every stage, summed
    peak_memory_gib: float | None = None  # per device
    gpu_memory_gib: float | None = None
    memory_source: str = ""
    tokens_per_s: float | None = None
    startup_s: float | None = None
    seconds: float | None = None  # wall time of all the run's processes together
    time_source: str = ""
    gpu_hours: float | None = None
    slurm_time_limit: str | None = None  # estimate × margin, rounded up; used when the user sets none
    processes: int = 1  # training processes (devices) of the run
    strategy: Strategy | None = None  # with several processes
    effective_batch: int = 0  # micro-batch × accumulation × processes
    scaling_efficiency: float | None = None  # throughput of N devices / (N × one device's)
    train_tokens: int = 0  # tokens the whole run trains on (every epoch, cut at max_steps)
    # a staged run: each stage's own estimate, in order (steps and time above are their sums, memory their max)
    stages: list[StageEstimate] = []
