"""A tool's run measured from outside, the same way for every tool (tunelab included).

Wall time from the command's start to its exit; every output line timestamped as it arrives (children run with
PYTHONUNBUFFERED=1), so a tool's per-step log lines give step times on one clock; peak RSS of the whole process
tree (the sum over the tree, sampled every 50 ms with psutil; no peer reports memory on a CPU); the load before
and after (/proc/loadavg)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

SAMPLE_S = 0.05


def installed_version(python: Path, distribution: str) -> str:
    """The version of `distribution` installed where `python` runs (a peer's own environment), as it reports it."""
    code = f"import importlib.metadata as m; print(m.version({distribution!r}))"
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.strip()


@dataclass(frozen=True)
class Line:
    t: float  # seconds since the command started
    text: str


@dataclass
class Measured:
    command: list[str]
    returncode: int
    wall_s: float
    peak_rss_mib: float
    lines: list[Line] = field(default_factory=list)
    load_before: str = ""
    load_after: str = ""
    rss: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, tree RSS MiB) samples
    peak_gpu_mib: float | None = None  # NVML's used memory of the visible GPUs at its highest (None: no GPU/NVML)

    def peak_rss_until(self, t: float) -> float | None:
        """The tree's peak RSS up to `t` seconds (e.g. the last training step's line): what training itself held,
        apart from whatever a tool does after it (tunelab times its step cost at twice the micro-batch then)."""
        seen = [mib for at, mib in self.rss if at <= t]
        return max(seen) if seen else None

    @property
    def output(self) -> str:
        return "\n".join(line.text for line in self.lines)

    def tail(self, n: int = 20) -> str:
        return "\n".join(line.text for line in self.lines[-n:])


def loadavg() -> str:
    """The 1-, 5- and 15-minute load averages, as /proc/loadavg writes them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class GpuMemory:
    """NVML's used memory of the GPUs visible to this process (tunelab's GPU sampler's reading: train/gpu_sampling.py),
    the same outside reading for every tool (peers report GPU memory each their own way, if at all); a no-op where
    NVML or a GPU is missing."""

    def __init__(self) -> None:
        from tunelab.train.gpu_sampling import visible_gpus

        self.nvml, self.handles = visible_gpus()

    def used_mib(self) -> float | None:
        if not self.handles:
            return None
        return sum(self.nvml.nvmlDeviceGetMemoryInfo(h).used for _, h in self.handles) / 2**20


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def thread_env(threads: int, extra: dict[str, str] | None = None, gpu: bool = False) -> dict[str, str]:
    """The environment every tool runs under: the same thread counts, no telemetry, offline, unbuffered; no GPU
    visible unless `gpu` (the GPU job: the machine's GPUs as they are)."""
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    env.update({"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_DISABLED": "true",
                "WANDB_MODE": "disabled", "DO_NOT_TRACK": "1", "AXOLOTL_DO_NOT_TRACK": "1",
                "DISABLE_VERSION_CHECK": "1"})
    if not gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    env.pop("PYTEST_XDIST_WORKER", None)
    env.update(extra or {})
    return env


def own_thread_rule(threads: int, env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The same cores as `threads` give the others, with tunelab's own thread rule over them (the command's prefix
    and its environment): a search whose combinations run side by side gives each its share of the cores, which an
    OMP_NUM_THREADS set for all would oversubscribe."""
    own = {k: v for k, v in env.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    cpus = sorted(os.sched_getaffinity(0))
    return (["taskset", "-c", ",".join(map(str, cpus[:threads]))] if threads < len(cpus) else []), own


def run_measured(command: list[str], env: dict[str, str], cwd: Path, log: Path | None = None,
                 timeout_s: float = 3600.0, gpu: bool = False) -> Measured:
    """Run `command`, stdout and stderr merged, each line timestamped; its tree's peak RSS (and with `gpu` the
    GPU's peak used memory); the whole output also written to `log` when given (the peer's own record of the
    run)."""
    before = loadavg()
    nvml = GpuMemory() if gpu else None
    gpu_peak: float | None = None
    start = time.monotonic()
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, errors="replace", bufsize=1)
    watched = psutil.Process(proc.pid)
    peak = 0
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        nonlocal peak, gpu_peak
        while not done.is_set():
            rss = _tree_rss(watched)
            peak = max(peak, rss)
            used = nvml.used_mib() if nvml is not None else None
            if used is not None:
                gpu_peak = max(gpu_peak or 0.0, used)
            samples.append((time.monotonic() - start, rss / 2**20))
            done.wait(SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    lines: list[Line] = []
    sink = log.open("w") if log else None
    try:
        assert proc.stdout is not None
        for text in proc.stdout:
            lines.append(Line(time.monotonic() - start, text.rstrip("\n")))
            if sink:
                sink.write(text)
            if time.monotonic() - start > timeout_s:
                proc.kill()
        returncode = proc.wait()
    finally:
        done.set()
        sampler.join()
        if sink:
            sink.close()
    wall = time.monotonic() - start
    return Measured(command=command, returncode=returncode, wall_s=wall, peak_rss_mib=peak / 2**20, lines=lines,
                    load_before=before, load_after=loadavg(), rss=samples, peak_gpu_mib=gpu_peak)
