"""What one training run of one tool gave, and the one formula every tool's tokens/s comes from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from peerlib.job import Inputs, Job
from peerlib.measure import Measured

WARMUP_STEPS = 2  # steps left out of the steady window (first-step compilation, allocator growth)


@dataclass
class StepLog:
    """A run's own log, read by its tool's parser: the arrival time of each optimizer step's log line (seconds
    since the command started, from Measured.lines), the loss it logged, and the tool's own tokens/s figure."""

    step_times: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    own_tokens_per_s: float | None = None


@dataclass
class TrainResult:
    tool: str
    version: str
    model: str
    repeat: int
    wall_s: float | None = None
    first_step_s: float | None = None
    own_tokens_per_s: float | None = None
    tokens_per_s: float | None = None  # the common count: steady_tokens_per_s
    peak_pss_mib: float | None = None  # the process tree's summed PSS at its highest (measure.py)
    training_pss_mib: float | None = None  # the same peak until the last step's log line
    peak_rss_sum_mib: float | None = None  # the tree's summed RSS at its highest: shared pages counted per process
    peak_gpu_mib: float | None = None  # the GPU job: NVML's used memory at its highest (measure.GpuMemory)
    final_loss: float | None = None
    accuracy: float | None = None
    steps: int = 0
    load_before: str = ""
    load_after: str = ""
    error: str | None = None  # why this run has no figures


def steady_tokens_per_s(step_times: list[float], training_tokens: int) -> float | None:
    """Training tokens ÷ the steady steps' wall time, the same count for every tool: the job's tokens spread
    evenly over its n steps, the steps after the first WARMUP_STEPS, timed between their log lines' arrivals."""
    n = len(step_times)
    if n <= WARMUP_STEPS + 1:
        return None
    span = step_times[-1] - step_times[WARMUP_STEPS - 1]
    return training_tokens * (n - WARMUP_STEPS) / n / span if span > 0 else None


class Peer(Protocol):
    """One tool's side of the comparison; implemented by a module per tool (peerlib/<tool>.py)."""

    name: str  # the row's name, e.g. "torchtune"
    env: str  # scripts/peer-env NAME ("" for tunelab: the benchmark's own interpreter)

    def version(self, python: Path) -> str: ...

    def train_command(self, inputs: Inputs, job: Job, out: Path, python: Path) -> list[str]:
        """Write whatever config the tool reads into `out` and return the command that trains (cwd: out)."""

    def adapter_dir(self, out: Path) -> Path:
        """Where the trained PEFT adapter (adapter_config.json + adapter_model.safetensors) lies after the run."""

    def parse(self, measured: Measured, out: Path) -> StepLog:
        """Step times, losses and the tool's own tokens/s from what the run printed and wrote."""
