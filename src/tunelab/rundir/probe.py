"""What a probe measures of one run shape (a few real steps), and the file that carries it from the
process that measured it to the one that records it: a probe job's probe/results.json."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.fsutil import atomic_write_text
from tunelab.host.cpuload import LoadWindow
from tunelab.rundir.memory import MemoryKind
from tunelab.rundir.record import JsonRecord


@dataclass(kw_only=True)
class ProbePoint(JsonRecord):
    """One micro-batch's timed steps: the fastest (least disturbed) as `seconds`, every timing and their median."""

    micro_batch: int
    tokens: float
    seconds: float
    peak_allocated_gib: float | None = None
    timings: list[float] = field(default_factory=list)  # every timed step at this micro-batch, seconds
    median_s: float | None = None


@dataclass(kw_only=True)
class ProbeStep(JsonRecord):
    """One timed step of a `--steps` probe (the GPU kit): its tokens, time and memory after it (the step's peak
    reserved on a GPU, resident memory on a CPU), so drift over many steps shows."""

    tokens: float
    seconds: float
    memory_gib: float


SPREAD_LIMIT = 0.2  # timings of one micro-batch further apart than this (slowest/fastest − 1) are timed again
MORE_ROUNDS = 2  # rounds of timed steps the probe adds at most, when the first disagrees or was contended
EVAL_PROBE_BATCH = 16  # the batch generation is timed at besides 1: evaluation's default (evaluate/provider.py)


@dataclass(kw_only=True)
class GenerationPoint(JsonRecord):
    """Generation of `batch` rows of `prompt_tokens`, timed with one new token (prefill) and `new_tokens`."""

    batch: int
    prompt_tokens: int
    new_tokens: int
    prefill_s: float
    total_s: float

    @property
    def step_s(self) -> float:
        """One decode step of this batch: the time past the prefill over the steps after the first token."""
        return max(0.0, self.total_s - self.prefill_s) / max(1, self.new_tokens - 1)


@dataclass(kw_only=True)
class GenerationSpeed(JsonRecord):
    """How fast a model generates on a device: prefill tokens per second, and a decode step as a fixed part plus a part
    per row (two batch sizes separate them); forecast/evaltime.py prices evaluations with it."""

    prefill_tokens_per_s: float
    decode_fixed_s: float
    decode_row_s: float
    points: list[GenerationPoint] = field(default_factory=list)

    @classmethod
    def decode(cls, known: dict[str, Any]) -> dict[str, Any]:
        return {**known, "points": [GenerationPoint.from_json(p) for p in known.get("points") or []]}

    @classmethod
    def fit(cls, points: list[GenerationPoint]) -> GenerationSpeed:
        """The speed from timed points: prefill tokens/s at the largest batch; decode step = fixed + row × batch
        through the smallest and largest batch (one batch only: all of it fixed)."""
        lo, hi = min(points, key=lambda p: p.batch), max(points, key=lambda p: p.batch)
        row = max(0.0, (hi.step_s - lo.step_s) / (hi.batch - lo.batch)) if hi.batch > lo.batch else 0.0
        fixed = max(0.0, lo.step_s - row * lo.batch)
        prefill = hi.batch * hi.prompt_tokens / max(hi.prefill_s, 1e-9)
        return cls(prefill_tokens_per_s=round(prefill, 2), decode_fixed_s=round(fixed, 6),
                   decode_row_s=round(row, 6), points=points)

    def decode_tokens_per_s(self, batch: int) -> float:
        """Tokens generated per second by decode steps of `batch` rows."""
        return batch / max(self.decode_fixed_s + self.decode_row_s * batch, 1e-9)


@dataclass(kw_only=True)
class ProbeResult(JsonRecord):
    """One shape's measurement; `tokens_per_s` and the peak are at the planned micro-batch."""

    micro_batch: int
    points: list[ProbePoint]
    tokens_per_s: float
    per_token_s: float | None
    fixed_s: float | None
    peak_memory_gib: float | None
    memory_kind: MemoryKind | None
    device: str
    cpu_threads: int
    cpu_model: str | None = None  # the probe job's CPU model on a CPU (host/machine.py); None on a GPU
    peak_reserved_gib: float | None = None
    versions: dict[str, str] = field(default_factory=dict)
    max_micro_batch: int | None = None  # --find-max-batch: the largest that really ran a step
    gpu_memory_gib: float | None = None
    # device-level readings (train/device_memory.py; None without a GPU or without NVML)
    nvml_used_gib: float | None = None  # NVML used by this process after the timed steps
    cuda_context_gib: float | None = None  # NVML used − torch's reserved after a first matmul
    cuda_context_after_gib: float | None = None  # the same after the timed steps (kernels load lazily)
    steps: list[ProbeStep] = field(default_factory=list)  # --steps: every timed step in order
    generation: GenerationSpeed | None = None  # batched generation timed after the steps (None: not measured)
    save_s: float | None = None  # one trainer checkpoint written as a run writes it, timed (None: not written)
    # process start to the trainer built (interpreter, imports, model load, tokenization): what a job's start-up
    # is in the history (a run measures it at its first step)
    startup_s: float | None = None
    # the timed steps' disagreement and the machine's load over them: a shape whose timings spread by more than
    # SPREAD_LIMIT, or timed under contention, is timed again (train/probe_steps.py)
    spread: float | None = None  # max/min − 1 of one micro-batch's timings, the largest over the micro-batches
    rounds: int | None = None  # rounds of timed steps taken (1: none repeated)
    settled: bool | None = None  # the last round's timings agreed and were not contended (False: it stayed so)
    load: LoadWindow | None = None  # over every timed round (cpuload.py; None: unknown)

    @classmethod
    def decode(cls, known: dict[str, Any]) -> dict[str, Any]:
        gen = known.get("generation")
        return {**known, "memory_kind": MemoryKind.read(known.get("memory_kind")),
                "load": LoadWindow.from_json(known.get("load")),
                "points": [ProbePoint.from_json(p) for p in known.get("points") or []],
                "steps": [ProbeStep.from_json(p) for p in known.get("steps") or []],
                "generation": GenerationSpeed.from_json(gen) if isinstance(gen, dict) else None}

    def to_dict(self) -> dict[str, Any]:
        return self.to_json()


def write_probe_results(path: Path, results: Iterable[tuple[str, ProbeResult]]) -> Path:
    """[{"shape": key, "result": ProbeResult}, …], atomically: present means complete."""
    return atomic_write_text(path, json.dumps([{"shape": k, "result": r.to_json()} for k, r in results], indent=1))


def read_probe_results(path: Path) -> dict[str, ProbeResult]:
    """{shape key: result}. Raises ValueError (or OSError) when the file is missing or damaged."""
    try:
        data = json.loads(path.read_text())
        return {d["shape"]: ProbeResult.from_json(d["result"]) for d in data}
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from None
