"""The input pipeline as a measured lever: how many dataloader workers a job gets, and how long the loop waits for its
next batch. The count is resolved in the job, not at scaffold time: the CPUs a job has (host/cores.py) are known only on
the node that runs it. It is recorded in summary.json."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from tunelab.host.cores import usable_cores
from tunelab.spec import TrainingConfig

MAX_DEFAULT_WORKERS = 8  # more rarely helps a tokenized, in-memory dataset; each worker costs memory


@dataclass(frozen=True)
class Workers:
    """The dataloader worker count of one process and the reason for it."""

    count: int
    source: str  # "training.dataloader_workers" | "cpu training" | the limit on the job's CPUs (host/cores.py)
    cpus: int | None  # CPUs the job has (None when the count was given)


def resolve_workers(configured: int | None, cuda: bool, processes: int = 1,
                    env: Mapping[str, str] | None = None) -> Workers:
    """The configured count; else on a GPU one worker per CPU beyond the one driving the GPU (at most
    MAX_DEFAULT_WORKERS); on a CPU 0, since there the cores compute the model and a worker only takes them away."""
    if configured is not None:
        return Workers(configured, "training.dataloader_workers", None)
    cores = usable_cores(env)
    if not cuda:
        return Workers(0, "cpu training", cores.count)
    per_process = cores.count // max(processes, 1)
    return Workers(max(0, min(per_process - 1, MAX_DEFAULT_WORKERS)), cores.source, cores.count)


def dataloader_args(workers: Workers, cuda: bool) -> dict[str, Any]:
    """Trainer arguments: workers kept across epochs (no re-spawn per epoch), pinned memory on a GPU only."""
    return {
        "dataloader_num_workers": workers.count,
        "dataloader_persistent_workers": workers.count > 0,
        "dataloader_pin_memory": cuda,
    }


class TimedIterator:
    """Wraps the trainer's epoch iterator; adds the seconds each `next()` blocks to `waited[0]`."""

    def __init__(self, inner: Iterator, waited: list[float]):
        self.inner, self.waited = inner, waited

    def __iter__(self) -> TimedIterator:
        return self

    def __next__(self):
        t0 = time.perf_counter()
        try:
            return next(self.inner)
        finally:
            self.waited[0] += time.perf_counter() - t0


def wait_summary(total: float, train_time_s: float | None) -> dict[str, Any]:
    """Total data wait of a run (its counters, carried across resumes) and its fraction of training time."""
    frac = total / train_time_s if train_time_s else None
    return {"data_wait_s": round(total, 3), "data_wait_fraction": round(frac, 4) if frac is not None else None}


@dataclass(frozen=True)
class Pipeline:
    """summary.json's input-pipeline facts: workers (and why that many), pinned memory, data wait."""

    workers: Workers
    pin_memory: bool
    data_wait_s: float
    data_wait_fraction: float | None


def pipeline_summary(t: TrainingConfig, cuda: bool, processes: int, data_wait_s: float, train_time_s: float
                     ) -> Pipeline:
    wait = wait_summary(data_wait_s, train_time_s)
    return Pipeline(resolve_workers(t.dataloader_workers, cuda, processes), cuda, wait["data_wait_s"],
                    wait["data_wait_fraction"])
