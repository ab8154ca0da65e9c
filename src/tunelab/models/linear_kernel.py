"""Which float32 kernel a CPU's linear layers use (models/cpu_linear.py), in words a plan's cache key and a job's log
can hold without importing torch: the kernels, the override, and the rule that turns two timings into a choice."""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum
from statistics import median

from tunelab.errors import TunelabError

ENV = "TUNELAB_CPU_MATMUL"  # auto (timed per machine) | aten | onednn
MIN_GAIN = 1.05  # oneDNN is used only when its median is at least this much faster: near-equal keeps PyTorch's own


class MatmulKernel(StrEnum):
    ATEN = "aten"  # PyTorch's own (MKL on x86)
    ONEDNN = "onednn"


@dataclass(frozen=True)
class KernelChoice:
    """The kernel a process uses for a layer shape, and why (a line for the job's log)."""

    kernel: MatmulKernel
    reason: str


def linear_mode() -> str:
    """`auto`, or the kernel TUNELAB_CPU_MATMUL names; anything else is refused, naming the variable."""
    wanted = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if wanted != "auto" and wanted not in tuple(MatmulKernel):
        raise TunelabError(f"{ENV}={wanted!r}: expected auto, aten or onednn", field=ENV)
    return wanted


def pick(aten_s: list[float], onednn_s: list[float]) -> tuple[MatmulKernel, float]:
    """The kernel the timings favour and oneDNN's speed-up (aten's median over oneDNN's): oneDNN only past MIN_GAIN."""
    gain = median(aten_s) / median(onednn_s)
    return (MatmulKernel.ONEDNN if gain >= MIN_GAIN else MatmulKernel.ATEN), gain
