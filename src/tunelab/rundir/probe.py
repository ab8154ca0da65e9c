"""What a probe measures of one run shape (a few real steps), and the file that carries it from the
process that measured it to the one that records it: a probe job's probe/results.json."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.fsutil import atomic_write_text
from tunelab.rundir.memory import MemoryKind
from tunelab.rundir.record import JsonRecord


@dataclass(kw_only=True)
class ProbePoint(JsonRecord):
    micro_batch: int
    tokens: float
    seconds: float
    peak_allocated_gib: float | None = None


@dataclass(kw_only=True)
class ProbeStep(JsonRecord):
    """One timed step of a `--steps` probe (the GPU kit): its tokens, time and memory after it (the step's peak
    reserved on a GPU, resident memory on a CPU), so drift over many steps shows."""

    tokens: float
    seconds: float
    memory_gib: float


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
    peak_reserved_gib: float | None = None
    versions: dict[str, str] = field(default_factory=dict)
    max_micro_batch: int | None = None  # --find-max-batch: the largest that really ran a step
    gpu_memory_gib: float | None = None
    # device-level readings (train/device_memory.py; None without a GPU or without NVML)
    nvml_used_gib: float | None = None  # NVML used by this process after the timed steps
    cuda_context_gib: float | None = None  # NVML used − torch's reserved after a first matmul
    cuda_context_after_gib: float | None = None  # the same after the timed steps (kernels load lazily)
    steps: list[ProbeStep] = field(default_factory=list)  # --steps: every timed step in order

    @classmethod
    def decode(cls, known: dict[str, Any]) -> dict[str, Any]:
        return {**known, "memory_kind": MemoryKind.read(known.get("memory_kind")),
                "points": [ProbePoint.from_json(p) for p in known.get("points") or []],
                "steps": [ProbeStep.from_json(p) for p in known.get("steps") or []]}

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
