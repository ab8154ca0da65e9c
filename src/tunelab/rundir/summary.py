"""summary.json: what a completed run measured and what it ran on, written once by the job (or by
tunelab adopt for a run it did not train). packing.json holds the dataset's PackingStats on its own,
written when training starts."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from tunelab.fsutil import atomic_write_json, read_json
from tunelab.host.cpuload import LoadWindow
from tunelab.rundir.layout import PACKING_FILE, SUMMARY_FILE
from tunelab.rundir.memory import MemoryKind
from tunelab.rundir.record import JsonRecord
from tunelab.rundir.stages import StageRecord
from tunelab.spec.resources import Strategy


@dataclass(kw_only=True)
class PackingStats(JsonRecord):
    """The dataset the trainer iterates: examples per sequence (density) and how full sequences are."""

    packed: bool | None = None
    max_seq_len: int | None = None
    examples: int | None = None
    sequences: int | None = None
    tokens: int | None = None
    density: float | None = None  # examples per sequence
    fill_fraction: float | None = None  # packed only: tokens / (sequences × max_seq_len)


@dataclass(kw_only=True)
class StepPoint(JsonRecord):
    batch: int
    tokens: float
    seconds: float
    peak_gib: float | None = None


# The step-cost calibration a one-process run does after its last checkpoint (train/step_cost.py), here because the
# plan prices its time (forecast/runs.py) as the job spends it: after a run of `steps` optimizer steps, one untimed
# round and then one timed round per STEPS_PER_STEP_COST_REPEAT steps (up to STEP_COST_REPEATS), each round a
# micro-batch at half and one at twice the run's micro-batch.
STEP_COST_REPEATS = 4
STEPS_PER_STEP_COST_REPEAT = 20


def calibrates_step_cost(processes: int, stage: bool, trial: bool = False) -> bool:
    """Whether a job takes the step-cost calibration after training (one rule for the job and the plan): a one-process
    run that is not a stage — several processes would time their collectives, and a stage's counters span its stages —
    nor a search's trial (no history records a trial: ~0.9 s of each completed trial's job on tiny, for nothing)."""
    return processes == 1 and not stage and not trial


def step_cost_repeats(steps: int) -> int:
    """Timed repeats worth their cost after a run of `steps` steps: one per 20 steps keeps the measurement within about
    a fifth of the training it follows; a run under 20 steps gets none (its step time is too rough)."""
    return min(STEP_COST_REPEATS, steps // STEPS_PER_STEP_COST_REPEAT)


def step_cost_sizes(micro_batch: int) -> list[int]:
    """The micro-batch sizes the calibration times: half and twice the run's."""
    return sorted({max(1, micro_batch // 2), micro_batch * 2})


def step_cost_seconds(steps: int, micro_batch: int, micro_batch_s: float) -> float:
    """The calibration's time after a run of `steps` steps whose micro-batch takes `micro_batch_s`: its rounds (the
    timed ones and the warm-up) × one micro-batch of each size, each priced in proportion to its rows."""
    repeats = step_cost_repeats(steps)
    if not repeats:
        return 0.0
    return (repeats + 1) * sum(micro_batch_s * size / micro_batch for size in step_cost_sizes(micro_batch))


@dataclass(kw_only=True)
class StepCost(JsonRecord):
    """A step's fixed and per-token cost, measured after the last checkpoint (train/step_cost.py)."""

    points: list[StepPoint] = field(default_factory=list)
    per_token_s: float | None = None
    fixed_s: float | None = None
    tokens_per_step: float | None = None
    repeats: int | None = None  # timed steps per point (the fastest is kept); fewer after a short run
    load: LoadWindow | None = None  # the machine's load over the timed steps (None: unknown)

    @classmethod
    def decode(cls, known: dict[str, Any]) -> dict[str, Any]:
        return {**known, "points": [StepPoint.from_json(p) for p in known.get("points") or []],
                "load": LoadWindow.from_json(known.get("load"))}


@dataclass(kw_only=True)
class ProcessMemory(JsonRecord):
    """What one process held at the end of training (its parameters' and optimizer state's storage, its peak RSS),
    and where."""

    rank: int
    frozen_param_bytes: int
    trainable_param_bytes: int
    optimizer_bytes: int
    peak_rss_bytes: int
    node: str | None = None  # the node it ran on: its cluster's address for it, else its hostname


@dataclass(kw_only=True)
class ThreadUse(JsonRecord):
    """The CPU threads each process computed with, and why (host/threads.py): `torch` threads in each of `processes`,
    sharing `cores_given` cores; `limit` says which limit set it, `source` where it was read."""

    torch: int | None = None
    cores_given: int | None = None
    processes: int | None = None
    source: str | None = None
    limit: str | None = None
    adapted_from: int | None = None  # the rule's threads, where the job took fewer for the cores others held at its start
    others_cores: float | None = None  # the cores others held then, on average (host/adapt.py)
    omit_none: ClassVar[frozenset[str]] = frozenset({"adapted_from", "others_cores"})


@dataclass(kw_only=True)
class Summary(JsonRecord):
    """summary.json. Fields a reader may miss (older runs, adopted runs) read as None."""

    omit_none = frozenset({"stage_final_loss", "stage_duration_s", "stages", "adopted_from", "adopted_kind",
                           "processes", "started_warm", "warm_imports_s"})

    run: str | None = None
    state: str | None = None
    attempt: int | None = None
    steps: int | None = None
    final_loss: float | None = None
    best_loss: float | None = None
    final_val_loss: float | None = None
    best_val_loss: float | None = None
    tokens: int | None = None  # all processes together, padding included
    nonpad_tokens: int | None = None
    nonpad_fraction: float | None = None
    tokens_per_s: float | None = None  # steady state, all processes together
    nonpad_tokens_per_s: float | None = None
    peak_memory_gib: float | None = None  # the worst process's
    memory_kind: MemoryKind | None = None
    checkpoints: list[str] = field(default_factory=list)  # epoch_N names
    epochs: int | float | None = None
    stage_final_loss: float | None = None  # a staged run: its last stage's
    stage_duration_s: float | None = None
    duration_s: float | None = None  # training wall time, all attempts (evaluations and saves included)
    train_time_s: float | None = None  # duration less overhead
    overhead_s: float | None = None  # validation and checkpoint saves
    saves: int | None = None  # checkpoint saves (mid-epoch and epoch ends), all attempts
    save_s: float | None = None  # seconds one save took, their mean (part of overhead_s; None: no save)
    step_cost: StepCost | None = None  # one-process unstaged runs only
    finish_s: float | None = None  # after training: step cost, summary
    startup_s: float | None = None  # process start to the first step (interpreter, imports, loading)
    process_started_at: str | None = None  # the (rank 0) training process's creation, ISO 8601 UTC: where startup_s
    # counts from, and where its job's dispatch ends (its submission to this: ledger/submission.py)
    started_warm: bool | None = None  # forked from a warm process (train/warm.py): startup_s holds no imports
    warm_imports_s: float | None = None  # what that warm process's imports took: the start-up this job skipped
    train_examples: int | None = None
    validation_examples: int | None = None
    packing: PackingStats | None = None
    dataloader_workers: int | None = None
    dataloader_workers_source: str | None = None
    pin_memory: bool | None = None
    data_wait_s: float | None = None
    data_wait_fraction: float | None = None  # of training time
    world_size: int | None = None
    distributed: Strategy | None = None  # what the trainer applied (None: one process)
    processes: list[ProcessMemory] | None = None  # what each process held, by rank (one for one process)
    effective_batch_size: int | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    device: str | None = None  # the GPU's name, or "cpu"
    gpu_memory_total_gib: float | None = None
    cpu_threads: int | None = None  # torch's threads in each process (threads: how they were chosen)
    cpu_model: str | None = None  # the CPU's model on a CPU run (host/machine.py); None on a GPU, or not recorded
    threads: ThreadUse | None = None
    dtype: str | None = None
    activation_checkpointing: bool | None = None
    attention: str | None = None  # run.yaml's resolved training.attention (varlen, sdpa, ...)
    attention_kernel: str | None = None  # what the layers really ran, e.g. "varlen_attn" or "per-sequence sdpa (...)"
    restarts: int | None = None
    versions: dict[str, str] | None = None
    pid: int | None = None
    stages: list[StageRecord] | None = None  # a staged run: its stages (without counters)
    adopted_from: str | None = None  # tunelab adopt: the output dir, and what kind of dir it was
    adopted_kind: str | None = None
    load: LoadWindow | None = None  # the machine's load over the training steps (cpuload.py; None: unknown)

    def cold_startup_s(self) -> float | None:
        """The start-up a cold job would have had: startup_s, plus the imports its warm process paid where it was
        forked warm (None where those are unknown) — what the history's start-ups and a start-up prediction's error
        compare (ledger/history.py, ledger/predictions.py), a cold job's and a warm one's alike."""
        if self.startup_s is None or not self.started_warm:
            return self.startup_s
        return None if self.warm_imports_s is None else round(self.startup_s + self.warm_imports_s, 3)

    @classmethod
    def decode(cls, known: dict[str, Any]) -> dict[str, Any]:
        out = dict(known)
        if "memory_kind" in out:
            out["memory_kind"] = MemoryKind.read(out["memory_kind"])
        if "distributed" in out:
            out["distributed"] = Strategy.read(out["distributed"])
        if isinstance(out.get("step_cost"), dict):
            out["step_cost"] = StepCost.from_json(out["step_cost"])
        if isinstance(out.get("packing"), dict):
            out["packing"] = PackingStats.from_json(out["packing"])
        if isinstance(out.get("threads"), dict):
            out["threads"] = ThreadUse.from_json(out["threads"])
        if out.get("processes") is not None:
            out["processes"] = [ProcessMemory.from_json(p) for p in out["processes"]]
        if out.get("stages") is not None:
            out["stages"] = [StageRecord.from_json(s) for s in out["stages"]]
        if "load" in out:
            out["load"] = LoadWindow.from_json(out["load"])
        if out.get("checkpoints") is None:
            out.pop("checkpoints", None)
        return out

    def to_json(self, keys: Iterable[str] | None = None, drop_none: bool = False) -> dict[str, Any]:
        out = super().to_json(keys, drop_none)
        if self.stages is not None and "stages" in out:
            out["stages"] = [s.without_counters() for s in self.stages]
        return out


def read_summary(run_dir: str | Path) -> Summary | None:
    """summary.json, or None when the run has none (not completed) or it is unreadable."""
    data = read_json(Path(run_dir) / SUMMARY_FILE, default=None)
    return Summary.from_json(data) if isinstance(data, dict) else None


def write_summary(run_dir: str | Path, summary: Summary, keys: Iterable[str] | None = None) -> Path:
    """`keys`: only these fields (a writer that knows only some of them: tunelab adopt)."""
    return atomic_write_json(Path(run_dir) / SUMMARY_FILE, summary.to_json(keys))


def write_packing(run_dir: str | Path, stats: PackingStats) -> Path:
    return atomic_write_json(Path(run_dir) / PACKING_FILE, stats.to_json())
