"""gpu_samples.jsonl: GPU utilization, memory used and power, one line per GPU per sample, written while a
run trains (train/gpu_sampling.py); the report reads what the run's GPUs did."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunelab.fsutil import read_jsonl
from tunelab.rundir.layout import SAMPLES_FILE

LOW_UTILIZATION_PCT = 50.0  # the report flags runs whose mean GPU utilization is below this


@dataclass(frozen=True)
class GpuSample:
    time: float  # unix seconds
    gpu: str  # the name CUDA_VISIBLE_DEVICES gave it (an index or a UUID), or the NVML index
    util_pct: float  # NVML: share of the last sample period a kernel ran
    mem_used_gib: float
    power_w: float | None


@dataclass(frozen=True)
class Utilization:
    """What the report shows of a run's GPU use."""

    samples: int
    mean_pct: float
    min_pct: float
    max_pct: float
    mean_power_w: float | None
    max_mem_used_gib: float


def read_samples(run_dir: str | Path) -> list[GpuSample]:
    samples = []
    for row in read_jsonl(Path(run_dir) / SAMPLES_FILE):
        try:
            samples.append(GpuSample(**row))
        except TypeError:  # a line of another shape: not a sample
            continue
    return samples


def utilization(run_dir: str | Path) -> Utilization | None:
    """Mean and min–max utilization over all samples of all the run's GPUs; None when nothing was sampled."""
    samples = read_samples(run_dir)
    if not samples:
        return None
    utils = [x.util_pct for x in samples]
    power = [x.power_w for x in samples if x.power_w is not None]
    return Utilization(len(utils), round(sum(utils) / len(utils), 1), min(utils), max(utils),
                       round(sum(power) / len(power), 1) if power else None, max(x.mem_used_gib for x in samples))
