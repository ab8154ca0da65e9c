"""What a probe reads of the device beside torch's allocator counters: the memory the driver says the process holds
(NVML "used"), the CUDA context, and on a CPU the resident memory.

NVML reports the whole device, so a baseline read before this process touches CUDA is subtracted. The CUDA context
(outside torch's allocator) is NVML's figure minus `memory_reserved()` after a first matmul, and again after the timed
steps (kernels load lazily). Without NVML: cudaMemGetInfo's total − free, with no baseline."""

from __future__ import annotations

import os
import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

GIB = 2**30
MATMUL_SIDE = 1024  # the first matmul: loads cuBLAS and the context's kernels, holds 2 MiB


def peak_rss_gib() -> float:
    """Peak resident set size of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / GIB if sys.platform == "darwin" else peak * 1024 / GIB


def rss_now_gib() -> float:
    """Resident set size now (Linux /proc; elsewhere the peak)."""
    statm = Path("/proc/self/statm")
    if not statm.is_file():
        return peak_rss_gib()
    return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / GIB


def _nvml_used_reader() -> Callable[[], int] | None:
    """A function returning NVML's used bytes of the device torch calls cuda:0, or None without NVML. Reading it
    initializes nothing of CUDA (torch maps CUDA_VISIBLE_DEVICES, indices or UUIDs, to NVML's index)."""
    try:
        import pynvml
        import torch

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda._get_nvml_device_index(0))
        pynvml.nvmlDeviceGetMemoryInfo(handle)
    except Exception:  # ImportError, no driver, a private helper renamed: NVML figures stay None
        return None
    return lambda: int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)


@dataclass
class DeviceMemory:
    """The device-level readings of one probe process (all None on a CPU, NVML's None without NVML)."""

    cuda: bool
    read_used: Callable[[], int] | None = None
    baseline: int = 0  # NVML used before this process created its CUDA context
    context_gib: float | None = None  # NVML used − reserved after a first matmul

    @classmethod
    def start(cls, cuda: bool) -> DeviceMemory:
        """Read the baseline, then create the context with a first matmul (CUDA); nothing to do on a CPU."""
        if not cuda:
            return cls(cuda=False)
        read = _nvml_used_reader()
        dm = cls(cuda=True, read_used=read, baseline=read() if read else 0)
        _first_matmul()
        if read is None:
            dm.read_used = _cuda_used
        dm.context_gib = dm.context_now_gib()
        return dm

    def used_gib(self) -> float | None:
        """What NVML says this process holds on the device now (the baseline subtracted)."""
        return (self.read_used() - self.baseline) / GIB if self.read_used else None

    def context_now_gib(self) -> float | None:
        """NVML used minus what torch's caching allocator has reserved: the memory outside torch's counters."""
        import torch

        used = self.used_gib()
        return used - torch.cuda.memory_reserved() / GIB if used is not None else None

    def step_gib(self) -> float:
        """After a step: its peak reserved on a GPU (reset before each timed step), resident memory on a CPU."""
        import torch

        return torch.cuda.max_memory_reserved() / GIB if self.cuda else rss_now_gib()


def _cuda_used() -> int:
    """The device's used bytes as CUDA reports them (total − free; the driver's own reservation excluded)."""
    import torch

    free, total = torch.cuda.mem_get_info(0)
    return int(total - free)


def _first_matmul() -> None:
    """A bf16 matmul on cuda:0, synchronized, freed: the context and cuBLAS exist afterwards."""
    import torch

    a = torch.ones(MATMUL_SIDE, MATMUL_SIDE, device="cuda", dtype=torch.bfloat16)
    (a @ a).sum().item()
    torch.cuda.synchronize()
    del a
    torch.cuda.empty_cache()
