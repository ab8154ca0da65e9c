"""GPU utilization, memory and power, sampled every few seconds while a run trains (NVML, the optional `gpu` extra),
into <run>/gpu_samples.jsonl, from a daemon thread of the process `tunelab train` started. Without NVML nothing is
written and nothing fails."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tunelab.rundir.gpu import GpuSample
from tunelab.rundir.layout import SAMPLES_FILE

INTERVAL_S = 5.0
INTERVAL_ENV = "TUNELAB_GPU_SAMPLE_S"  # seconds between samples (tests and short runs set it lower)


def _nvml() -> Any | None:
    """The initialized pynvml module, or None where NVML cannot be used."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # ImportError, NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded, ...
        return None


def _handles(nvml) -> list[tuple[str, Any]]:
    """NVML handles of the GPUs this job may use: CUDA_VISIBLE_DEVICES (indices or UUIDs), else all."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [x.strip() for x in env.split(",") if x.strip()] if env is not None else [
        str(i) for i in range(nvml.nvmlDeviceGetCount())]
    out = []
    for name in names:
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(int(name)) if name.isdigit() else \
                nvml.nvmlDeviceGetHandleByUUID(name)
        except Exception:  # a name NVML does not know (e.g. a MIG instance): not sampled
            continue
        out.append((name, handle))
    return out


def visible_gpus() -> tuple[Any | None, list[tuple[str, Any]]]:
    """The initialized pynvml module and handles of this process's GPUs; (None, []) without NVML."""
    nvml = _nvml()
    return nvml, (_handles(nvml) if nvml is not None else [])


def sample_once(nvml, handles: list[tuple[str, Any]]) -> list[GpuSample]:
    now = time.time()
    out = []
    for name, h in handles:
        util = nvml.nvmlDeviceGetUtilizationRates(h).gpu
        mem = nvml.nvmlDeviceGetMemoryInfo(h).used / 2**30
        try:
            power = nvml.nvmlDeviceGetPowerUsage(h) / 1000.0  # milliwatts
        except Exception:  # not every board reports power
            power = None
        out.append(GpuSample(round(now, 3), name, float(util), round(mem, 3), power))
    return out


class GpuSampler:
    """Context manager: samples in a daemon thread from enter to exit; a no-op without NVML."""

    def __init__(self, run_dir: Path, interval_s: float | None = None):
        self.path = Path(run_dir) / SAMPLES_FILE
        self.interval_s = interval_s or float(os.environ.get(INTERVAL_ENV) or INTERVAL_S)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        nvml, handles = visible_gpus()
        if handles:
            self._thread = threading.Thread(target=self._loop, args=(nvml, handles), daemon=True,
                                            name="tunelab-gpu-sampler")
            self._thread.start()
        return self

    def _loop(self, nvml, handles) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                rows = sample_once(nvml, handles)
            except Exception:  # a sampling hiccup never touches training
                continue
            try:
                with open(self.path, "a", encoding="utf-8") as fh:
                    fh.write("".join(json.dumps(asdict(r)) + "\n" for r in rows))
            except OSError:  # a full disk: the training's own writes stop the job with one line, not this thread
                continue

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 5)
