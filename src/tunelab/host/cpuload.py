"""How much of the machine a timed measurement had: the job's CPU time beside its wall time, and what other processes on
its cores used meanwhile (/proc/stat), so a step timed under load is known as such instead of learned from as this
machine's speed.

The job's own CPU is its process tree's (its root: this process or torchrun's agent), so dataloader workers, ranks and a
vLLM server it started are the job's; others are the cores' busy seconds less the tree's. Without /proc/stat the load is
unknown, never idle. A GPU run's window records the load but is never contended: CPU contention reaches it only through
its input pipeline, which the run measures itself."""

from __future__ import annotations

import functools
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.console import warn
from tunelab.host.cores import usable_cpus

PROC = Path("/proc")
PROC_STAT = PROC / "stat"
BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user nice system [idle iowait] irq softirq steal (guest is inside user)
CONTENDED_SLOWDOWN = 1.15  # a window whose predicted slowdown is above this is contended
MIN_FREE_CORES = 0.1  # free cores never read below this (a slowdown stays finite)


def _ticks_per_s() -> int:
    try:
        return int(os.sysconf("SC_CLK_TCK"))
    except (ValueError, OSError, AttributeError):
        return 100


def machine_busy_s(cores: list[int], stat: Path = PROC_STAT) -> float | None:
    """CPU-seconds every process used on these cores since boot (None: no /proc/stat, or none of them in it)."""
    try:
        text = stat.read_text()
    except OSError:
        return None
    wanted = {f"cpu{c}" for c in cores}
    ticks = 0
    found = False
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if name in wanted:
            values = rest.split()
            ticks += sum(int(values[i]) for i in BUSY_FIELDS if i < len(values))
            found = True
    return ticks / _ticks_per_s() if found else None


def _pid_stat(proc: Path, pid: str) -> tuple[int, int] | None:
    """(parent pid, utime + stime + cutime + cstime ticks) of one process (None: gone, or not a process)."""
    try:
        fields = (proc / pid / "stat").read_text().rsplit(")", 1)[1].split()  # the name may hold spaces and ')'
        return int(fields[1]), sum(int(v) for v in fields[11:15])
    except (OSError, IndexError, ValueError):
        return None


def scan_tree(root: int, proc: Path = PROC) -> tuple[float, frozenset[int]] | None:
    """CPU-seconds of `root` and every live descendant (each with the children it reaped) and the tree's pids; None when
    `root` is gone. Walked down the kernel's children lists where it keeps them, else a scan of every process (a busy
    node's thousands: slow at every logged step)."""
    walked = walk_tree(root, proc)
    return walked if walked is not None else _scan_every_process(root, proc)


def walk_tree(root: int, proc: Path = PROC) -> tuple[float, frozenset[int]] | None:
    """scan_tree from /proc/<pid>/task/<tid>/children (CONFIG_PROC_CHILDREN); None where the kernel keeps no such file
    or `root` is gone. A child whose parent exits mid-walk is missed until the next."""
    ticks, todo, tree = 0, [root], set()
    while todo:
        pid = todo.pop()
        got = _pid_stat(proc, str(pid))
        kids = _children(proc, pid) if got is not None else []
        if got is None or kids is None:
            if pid == root:  # gone, or no children files on this kernel: the caller scans instead
                return None
            continue
        tree.add(pid)
        ticks += got[1]
        todo.extend(k for k in kids if k not in tree)
    return ticks / _ticks_per_s(), frozenset(tree)


def _children(proc: Path, pid: int) -> list[int] | None:
    """Every child of `pid`, from each of its threads' children file (None: the kernel keeps none)."""
    try:
        tasks = list((proc / str(pid) / "task").iterdir())
    except OSError:
        return None
    kids, files = [], 0
    for task in tasks:
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
            files += 1
        except FileNotFoundError:
            continue  # a thread that ended since, or no such file at all (counted below)
        except (OSError, ValueError):
            return None
    return kids if files else None


def _scan_every_process(root: int, proc: Path) -> tuple[float, frozenset[int]] | None:
    try:
        pids = [e.name for e in proc.iterdir() if e.name.isdigit()]
    except OSError:
        return None
    stats = {int(pid): got for pid in pids if (got := _pid_stat(proc, pid)) is not None}
    if root not in stats:
        return None
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in stats.items():
        children.setdefault(parent, []).append(pid)
    ticks, todo, tree = 0, [root], set()
    while todo:
        pid = todo.pop()
        tree.add(pid)
        ticks += stats[pid][1]
        todo.extend(children.get(pid, []))
    return ticks / _ticks_per_s(), frozenset(tree)


def known_tree_cpu_s(root: int, pids: frozenset[int], proc: Path = PROC) -> float | None:
    """The tree's CPU seconds over the pids a scan found, read alone (None: `root` is gone); a child born since is missed."""
    ticks = 0
    for pid in pids:
        got = _pid_stat(proc, str(pid))
        if got is None and pid == root:
            return None
        ticks += got[1] if got is not None else 0
    return ticks / _ticks_per_s()


def on_gpu() -> bool:
    """This process computes on a GPU: torch is loaded and has CUDA (training's and evaluation's own rule)."""
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    return bool(cuda is not None and cuda.is_available())


def process_cpu_s() -> float:
    """This process's user + system CPU seconds, all its threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def torch_threads() -> int:
    """Torch's intra-op threads when torch is loaded (1 otherwise: a process without torch runs one). A torch still
    being imported (in sys.modules, get_num_threads not yet defined) is counted as 1 thread, and said in a line."""
    torch = sys.modules.get("torch")
    if torch is None:
        return 1
    try:
        return int(torch.get_num_threads())
    except AttributeError as exc:
        _say_once(f"the load meter could not read torch's threads ({exc}; torch not yet fully imported): this "
                  "window's load counts 1 thread, so its slowdown may read low")
        return 1


@functools.cache
def _say_once(text: str) -> None:
    """A line said once per process (a meter reads its threads at every window)."""
    warn(text)


@dataclass(frozen=True)
class LoadWindow:
    """One timed window: the job's wall and CPU seconds, others' CPU-seconds on its cores, its cores and threads.
    `slowdown` is a lower bound for a CPU run (oversubscribed threads spin worse than their share); a GPU run's none."""

    wall_s: float
    cpu_s: float  # the job's process tree: this process, its dataloader workers, its sibling ranks (see the module)
    others_cpu_s: float  # every other process on its cores, never below 0
    cores: int
    threads: int
    gpu: bool = False  # a GPU run's window: the load recorded, no slowdown predicted

    @property
    def others_share(self) -> float:
        """The share of the cores others held, 0..1."""
        if self.wall_s <= 0 or self.cores <= 0:
            return 0.0
        return min(1.0, max(0.0, self.others_cpu_s / (self.wall_s * self.cores)))

    @property
    def others_cores(self) -> float:
        """Cores other processes held on average over the window."""
        return self.others_cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def free_cores(self) -> float:
        """Cores left to this process on average over the window."""
        return self.cores - self.others_cores

    @property
    def slowdown(self) -> float:
        """How much slower than alone: the cores its threads could use over those others left it (≥ 1; 1 on a GPU)."""
        if self.gpu:
            return 1.0
        wanted = min(max(self.threads, 1), self.cores)
        return max(1.0, wanted / max(self.free_cores, MIN_FREE_CORES))

    @property
    def contended(self) -> bool:
        return self.slowdown > CONTENDED_SLOWDOWN

    def describe(self) -> str:
        """'contended ×3.1', 'idle', or a GPU run's 'GPU run; others held 40% of the CPUs': a warning's words."""
        if self.gpu:
            return f"GPU run; others held {self.others_share:.0%} of the CPUs"
        return f"contended ×{self.slowdown:.1f}" if self.contended else "idle"

    def to_json(self) -> dict[str, Any]:
        """The measured fields, then the derived ones (for a reader of the file; from_json ignores them)."""
        return {"wall_s": round(self.wall_s, 3), "cpu_s": round(self.cpu_s, 3),
                "others_cpu_s": round(self.others_cpu_s, 3), "cores": self.cores, "threads": self.threads,
                "gpu": self.gpu, "others_share": round(self.others_share, 4), "slowdown": round(self.slowdown, 3),
                "contended": self.contended}

    @classmethod
    def from_json(cls, data: Any) -> LoadWindow | None:
        """The window a file holds; None for anything else (an older file without it, a damaged value)."""
        if not isinstance(data, dict):
            return None
        try:
            return cls(wall_s=float(data["wall_s"]), cpu_s=float(data["cpu_s"]),
                       others_cpu_s=float(data["others_cpu_s"]), cores=int(data["cores"]),
                       threads=int(data["threads"]), gpu=bool(data.get("gpu", False)))
        except (KeyError, TypeError, ValueError):
            return None

    @classmethod
    def combined(cls, windows: list[LoadWindow]) -> LoadWindow | None:
        """Several windows as one (summed times; the most cores and threads any had; a GPU run's if any was)."""
        if not windows:
            return None
        return cls(wall_s=sum(w.wall_s for w in windows), cpu_s=sum(w.cpu_s for w in windows),
                   others_cpu_s=sum(w.others_cpu_s for w in windows), cores=max(w.cores for w in windows),
                   threads=max(w.threads for w in windows), gpu=any(w.gpu for w in windows))


RESCAN_CORES = 0.05  # others' average use since the last reading above which the job's tree is scanned again


@dataclass(frozen=True)
class _Reading:
    wall: float
    busy: float
    own: float


class LoadMeter:
    """Started at the beginning of what is timed: `window()` since the start, `lap()` since the previous lap. `threads`
    None: read from torch; `root` None: this process; `gpu` None: this process's device."""

    def __init__(self, cores: list[int], first: _Reading, threads: int | None, root: int, gpu: bool, stat: Path,
                 proc: Path, tree: frozenset[int]):
        self._cores, self._start, self._last = cores, first, first
        self._threads, self._root, self._gpu, self._stat, self._proc = threads, root, gpu, stat, proc
        self._tree = tree  # the job's pids at the last scan

    @classmethod
    def start(cls, threads: int | None = None, root: int | None = None, gpu: bool | None = None,
              stat: Path = PROC_STAT, proc: Path = PROC) -> LoadMeter | None:
        """A meter from now; None where the machine's load cannot be read (no /proc/stat, or no such root)."""
        cores = usable_cpus()
        root = os.getpid() if root is None else root
        busy = machine_busy_s(cores, stat)
        scanned = scan_tree(root, proc) if busy is not None else None
        if busy is None or scanned is None:
            return None
        return cls(cores, _Reading(time.monotonic(), busy, scanned[0]), threads, root,
                   on_gpu() if gpu is None else gpu, stat, proc, scanned[1])

    def _now(self) -> _Reading | None:
        """A reading of the job's known pids alone; the tree found again only where others seem to hold more than
        RESCAN_CORES since the last reading (a new child would count as theirs), so an idle machine costs a few
        reads."""
        busy = machine_busy_s(self._cores, self._stat)
        if busy is None:
            return None
        own = known_tree_cpu_s(self._root, self._tree, self._proc)
        if own is not None:
            last, now = self._last, time.monotonic()
            others = (busy - last.busy) - max(0.0, own - last.own)  # as _between counts them
            # ticks are 10 ms and counted apart per process and per core: two of them are the readings' noise
            if others <= RESCAN_CORES * (now - last.wall) + 2 / _ticks_per_s():
                return _Reading(now, busy, own)
        scanned = scan_tree(self._root, self._proc)
        if scanned is None:
            return None
        self._tree = scanned[1]
        return _Reading(time.monotonic(), busy, scanned[0])

    def _between(self, a: _Reading, b: _Reading) -> LoadWindow:
        own = max(0.0, b.own - a.own)
        others = max(0.0, (b.busy - a.busy) - own)
        return LoadWindow(wall_s=max(0.0, b.wall - a.wall), cpu_s=own, others_cpu_s=others, cores=len(self._cores),
                          threads=self._threads if self._threads is not None else torch_threads(), gpu=self._gpu)

    def window(self) -> LoadWindow | None:
        """The load since the start (None: /proc/stat or the root went away)."""
        now = self._now()
        return self._between(self._start, now) if now is not None else None

    def lap(self) -> LoadWindow | None:
        """The load since the previous lap (or the start)."""
        now = self._now()
        if now is None:
            return None
        window, self._last = self._between(self._last, now), now
        return window
