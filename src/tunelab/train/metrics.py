"""What a run measures about itself: tokens (all and non-padding), throughput over training time only, peak memory,
loss, val_loss. Counted in tokens, since memory and speed scale with tokens and packed and unpacked runs compare only
that way."""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from tunelab.host.cpuload import LoadMeter, process_cpu_s
from tunelab.rundir.checkpoints import Counters
from tunelab.rundir.memory import MemoryKind
from tunelab.rundir.metrics import MetricRow, append_metric
from tunelab.rundir.summary import PackingStats


@dataclass
class LocalCounts:
    """What this process counted since the last sync (a collective at the same step). Counts that need the batch's
    values are summed as tensors and read once at the sync: read every micro-batch they would stall the host."""

    tokens: int = 0
    nonpad_tokens: int | torch.Tensor = 0
    examples: int | torch.Tensor = 0
    data_wait: list[float] = field(default_factory=lambda: [0.0])  # seconds; a list so an iterator can add

    def add(self, tokens: int, nonpad: int | torch.Tensor, examples: int | torch.Tensor) -> None:
        self.tokens += tokens
        self.nonpad_tokens = self.nonpad_tokens + nonpad
        self.examples = self.examples + examples

    def read(self) -> tuple[int, int, int]:
        """(tokens, non-pad tokens, examples) as numbers: the tensors among them read in one transfer."""
        values: list[int | torch.Tensor] = [self.tokens, self.nonpad_tokens, self.examples]
        held = [i for i, v in enumerate(values) if isinstance(v, torch.Tensor)]
        if held:
            read = torch.stack([torch.as_tensor(values[i]).reshape(()).long() for i in held]).tolist()
            for i, v in zip(held, read):
                values[i] = v
        return int(values[0]), int(values[1]), int(values[2])


def sync_counters(counters: Counters, local: LocalCounts) -> float:
    """Sum every process's local counts into the run-wide counters; the worst process's peak. A collective."""
    from tunelab.train.distributed import all_reduce

    tokens, nonpad, examples = all_reduce(list(local.read()), "sum")
    counters.tokens += int(tokens)
    counters.nonpad_tokens += int(nonpad)
    counters.examples += int(examples)
    local.tokens = local.nonpad_tokens = local.examples = 0
    peak, wait = all_reduce([peak_memory()[0], local.data_wait[0]], "max")
    counters.data_wait_s += float(wait)
    local.data_wait[0] = 0.0
    return peak


def count_batch(inputs: dict[str, Any]) -> tuple[int, int | torch.Tensor, int | torch.Tensor]:
    """(tokens, non-pad tokens, examples) of one micro-batch, padded or padding-free. A count taken from the batch's
    values is left a tensor on the batch's device (LocalCounts reads it at the next sync): no sync here."""
    ids = inputs["input_ids"]
    tokens = int(ids.numel())
    if "position_ids" in inputs and ids.shape[0] == 1 and "attention_mask" not in inputs:
        # padding-free: all tokens are real; examples = restarts of position ids at 0
        return tokens, tokens, (inputs["position_ids"] == 0).sum()
    if "attention_mask" in inputs:
        return tokens, inputs["attention_mask"].sum(), int(ids.shape[0])
    return tokens, tokens, int(ids.shape[0])


def packing_stats(dataset, max_seq_len: int, packed: bool) -> PackingStats:
    """Examples, sequences, density and fill of the dataset the trainer iterates, counted by Arrow (fast)."""
    import pyarrow.compute as pc

    columns = dataset.with_format("arrow")
    if packed and "seq_lengths" in dataset.column_names:
        lengths = columns["seq_lengths"]
        examples = pc.sum(pc.list_value_length(lengths)).as_py() or 0
        tokens = pc.sum(pc.list_flatten(lengths)).as_py() or 0
        sequences = len(dataset)
    else:
        examples = len(dataset)
        sequences = examples
        tokens = pc.sum(pc.list_value_length(columns["input_ids"])).as_py() or 0
    return PackingStats(
        packed=packed, max_seq_len=max_seq_len, examples=examples, sequences=sequences, tokens=tokens,
        density=round(examples / sequences, 4) if sequences else None,
        fill_fraction=round(tokens / (sequences * max_seq_len), 4) if packed and sequences else None)


def process_age_s() -> float | None:
    """Seconds since this process was created, so start-up includes interpreter and imports: the clock since boot
    less the process's start in /proc/self/stat (both since boot, to a 10 ms tick; /proc/stat's btime, whole
    seconds, put it up to a second off)."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        with open("/proc/self/stat") as stat:
            start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
        return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / ticks
    except (OSError, ValueError, IndexError, AttributeError):  # not Linux: no /proc, no CLOCK_BOOTTIME
        return None


_WARM: list[float | None] = []  # the imports of the warm process this job was forked from (train/warm.py), if it was


def mark_started_warm(imports_s: float | None) -> None:
    """This job was forked from a warm process (train/warm.py) whose imports took `imports_s` (its process age once
    imported; None: not readable): its own process_age_s holds no imports."""
    _WARM[:] = [imports_s]


def started_warm() -> bool:
    """Whether this job was forked from a warm process (its start-up is its model and data, not the stack's imports)."""
    return bool(_WARM)


def warm_imports_s() -> float | None:
    """The seconds its warm process took to import the stack (None: a cold job, or not readable)."""
    return _WARM[0] if _WARM else None


def process_started_at() -> str | None:
    """When this process was created (ISO 8601, UTC, milliseconds): now less `process_age_s`, the one clock start-up
    counts from, so that a job's dispatch (its submission to this) and its start-up meet without a gap."""
    age = process_age_s()
    return None if age is None else datetime.fromtimestamp(time.time() - age, UTC).isoformat(timespec="milliseconds")


def job_root() -> int:
    """The process whose tree is this run: torchrun's agent (TORCHELASTIC_RUN_ID set), else this process."""
    return os.getppid() if "TORCHELASTIC_RUN_ID" in os.environ else os.getpid()


def peak_memory() -> tuple[float, MemoryKind]:
    """Peak memory in GiB and what it measures: CUDA allocated on a GPU, process RSS on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30, MemoryKind.CUDA_MAX_ALLOCATED
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, MemoryKind.HOST_MAX_RSS


class MetricsWriter:
    """Appends one metrics.jsonl row per logging step (training) or evaluation (validation), and to `rows`,
    the file's rows as the job holds them (kept at resume: train/context.py), so the job never reads it back."""

    def __init__(self, run_dir: Path, counters: Counters, stage: str | None = None,
                 rows: list[MetricRow] | None = None):
        self.run_dir = run_dir
        self.counters = counters
        self.rows: list[MetricRow] = [] if rows is None else rows  # metrics.jsonl as it is now
        self.stage = stage  # named on every row of a staged run
        self.started = time.monotonic()
        self.base_elapsed = counters.elapsed_s
        self._last = (counters.tokens, self._train_time(), counters.data_wait_s)  # at the last training row
        self.load = LoadMeter.start(root=job_root())  # others' share of the cores, row to row

    def _train_time(self) -> float:
        return self.elapsed() - self.counters.overhead_s

    def elapsed(self) -> float:
        return self.base_elapsed + (time.monotonic() - self.started)

    def write(self, step: int, epoch: float | None, logs: dict[str, Any], peak_gib: float | None = None) -> MetricRow:
        """One row from the trainer's logs; peak_gib: the worst process's peak, else this process's."""
        c = self.counters
        c.elapsed_s = self.elapsed()
        train_time = self._train_time()
        last_tokens, last_time, last_wait = self._last
        d_time = train_time - last_time
        is_eval = "eval_loss" in logs
        peak, kind = peak_memory()
        row = MetricRow(
            step=step, epoch=round(epoch, 4) if epoch is not None else None,
            loss=None if is_eval else logs.get("loss"), val_loss=logs.get("eval_loss"),
            lr=logs.get("learning_rate"), grad_norm=logs.get("grad_norm"),
            tokens=c.tokens, nonpad_tokens=c.nonpad_tokens, examples=c.examples,
            tokens_per_s=None if is_eval or d_time <= 0 else round((c.tokens - last_tokens) / d_time, 2),
            train_time_s=round(train_time, 3),
            # waited for data since the last training row (every process's wait, the slowest one's)
            data_wait_s=None if is_eval else round(c.data_wait_s - last_wait, 4),
            peak_memory_gib=round(peak if peak_gib is None else peak_gib, 4), memory_kind=kind,
            elapsed_s=round(c.elapsed_s, 3), stage=self.stage, cpu_s=round(process_cpu_s(), 3),
            others_share=self._others_share())
        if not is_eval:
            self._last = (c.tokens, train_time, c.data_wait_s)
        append_metric(self.run_dir, row)
        self.rows.append(row)
        return row

    def _others_share(self) -> float | None:
        """The share of the cores other processes held since the previous row (None: the load is unknown)."""
        window = self.load.lap() if self.load is not None else None
        return round(window.others_share, 4) if window is not None else None

    def snapshot(self) -> Counters:
        """The counters now (elapsed time brought up to date), as a checkpoint records them."""
        self.counters.elapsed_s = self.elapsed()
        return replace(self.counters)
