"""A tool's run measured from outside, the same way for every tool (tunelab included).

Wall time from the command's start to its exit; every output line timestamped as it arrives (children run with
PYTHONUNBUFFERED=1), so a tool's per-step log lines give step times on one clock; the peak memory of the whole
process tree, sampled every 50 ms (no peer reports memory on a CPU): its PSS (each process's proportional set size,
/proc/PID/smaps_rollup: a page shared by n processes counts 1/n in each, so the tree's sum counts it once) — the
figure compared —, and beside it the summed RSS the benchmark used to report, which counts a page shared by forked
workers once per worker (issue 66: axolotl's data workers doubled); the load before and after (/proc/loadavg).
Several commands can run at once (run_all): each is measured on its own, on one clock, so their overlap shows."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

# How often the tree's memory is read. Reading a process's smaps_rollup walks its page tables: 5.6 ms of CPU for a
# process that imported torch (measured here, 2026-11-28), once per process of the tree per look. At 0.05 s that took
# ~28 % of two cores from a tree of five such processes (tunelab's search: the coordinator, two warm processes, two
# trials) against ~11 % from Oumi's two, so the sampler slowed the tool with more processes; at 0.2 s it is a quarter
# of that. A training step's memory stays high for the whole run (the allocator keeps what it freed), so the peak is
# still seen. `sampler_cpu_s` says what the reads cost each command.
SAMPLE_S = 0.2


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
    peak_pss_mib: float  # the tree's summed PSS at its highest: the memory figure compared
    lines: list[Line] = field(default_factory=list)
    load_before: str = ""
    load_after: str = ""
    pss: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, tree PSS MiB) samples
    peak_gpu_mib: float | None = None  # NVML's used memory of the visible GPUs at its highest (None: no GPU/NVML)
    peak_rss_mib: float = 0.0  # the tree's summed RSS at its highest: shared pages counted once per process
    started: float = 0.0  # time.monotonic() at the start and at the exit: runs measured at once compare on it
    ended: float = 0.0
    sampler_cpu_s: float = 0.0  # the CPU the memory reads took (this process's sampler thread), on the same cores

    def peak_pss_until(self, t: float) -> float | None:
        """The tree's peak PSS up to `t` seconds (e.g. the last training step's line): what training itself held,
        apart from whatever a tool does after it (tunelab times its step cost at twice the micro-batch then)."""
        seen = [mib for at, mib in self.pss if at <= t]
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


def process_pss(proc: psutil.Process) -> int:
    """One process's PSS in bytes: the `Pss:` line of /proc/PID/smaps_rollup (one summed record, cheap to read
    every 50 ms), else psutil's (which walks /proc/PID/smaps) where the kernel has no rollup."""
    try:
        with open(f"/proc/{proc.pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024  # kB
        return 0  # a zombie's rollup is empty: it holds no memory
    except FileNotFoundError:
        return int(proc.memory_full_info().pss)


def tree_memory(proc: psutil.Process) -> tuple[int, int]:
    """(summed PSS, summed RSS) in bytes over `proc` and its descendants; a process gone mid-read counts 0."""
    pss = rss = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    for p in procs:
        try:
            rss += p.memory_info().rss
            pss += process_pss(p)
        except (psutil.Error, ProcessLookupError, PermissionError):
            pass
    return pss, rss


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
                 timeout_s: float = 3600.0, gpu: bool = False, memory: bool = True) -> Measured:
    """Run `command`, stdout and stderr merged, each line timestamped; its tree's peak PSS and summed RSS (and with
    `gpu` the GPU's peak used memory); the whole output also written to `log` when given (the peer's own record of
    the run). `memory` off: nothing read while it runs (a comparison of walls alone: the reads cost CPU on the same
    cores, more for a tree of more processes)."""
    before = loadavg()
    nvml = GpuMemory() if gpu else None
    gpu_peak: float | None = None
    start = time.monotonic()
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, errors="replace", bufsize=1)
    watched = psutil.Process(proc.pid)
    peak_pss = peak_rss = 0
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    sampler_cpu = [0.0]

    def sample() -> None:
        nonlocal peak_pss, peak_rss, gpu_peak
        while not done.is_set():
            pss, rss = tree_memory(watched)
            peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
            used = nvml.used_mib() if nvml is not None else None
            if used is not None:
                gpu_peak = max(gpu_peak or 0.0, used)
            samples.append((time.monotonic() - start, pss / 2**20))
            sampler_cpu[0] = time.thread_time()
            done.wait(SAMPLE_S)

    sampler = threading.Thread(target=sample if memory else done.wait, daemon=True)
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
    end = time.monotonic()
    return Measured(command=command, returncode=returncode, wall_s=end - start, peak_pss_mib=peak_pss / 2**20,
                    lines=lines, load_before=before, load_after=loadavg(), pss=samples, peak_gpu_mib=gpu_peak,
                    peak_rss_mib=peak_rss / 2**20, started=start, ended=end, sampler_cpu_s=round(sampler_cpu[0], 2))


@dataclass(frozen=True)
class Launch:
    """One command of several to measure (run_all): what run_measured takes."""

    command: list[str]
    env: dict[str, str]
    cwd: Path
    log: Path | None = None
    memory: bool = True  # run_measured's


def run_all(launches: list[Launch], at_once: bool) -> list[Measured]:
    """Each launch measured by run_measured, one after the other, or all at once (a thread each, so they start
    together); in the launches' order either way. Their `started`/`ended` share one clock: span() is the wall."""
    if not at_once:
        return [run_measured(x.command, x.env, x.cwd, x.log, memory=x.memory) for x in launches]
    results: list[Measured | None] = [None] * len(launches)

    def one(i: int, x: Launch) -> None:
        results[i] = run_measured(x.command, x.env, x.cwd, x.log, memory=x.memory)

    threads = [threading.Thread(target=one, args=(i, x)) for i, x in enumerate(launches)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if any(r is None for r in results):
        raise RuntimeError("run_all: a launch raised before it was measured (see the thread's traceback above)")
    return [r for r in results if r is not None]


def span(measured: list[Measured]) -> float:
    """The wall time of runs measured together: the first start to the last exit."""
    return max(m.ended for m in measured) - min(m.started for m in measured)
