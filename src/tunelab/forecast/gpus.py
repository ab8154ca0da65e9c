"""How many GPUs and nodes a run needs when its model does not fit the GPUs it has.

FSDP divides the weights and optimizer state over the GPUs while a micro-batch's activations stay whole on each, so the
peak per GPU falls with every GPU added, towards a floor: the count is found by simulating each count tried
(estimate/peak.py `fits`), and where even the floor does not fit, no count does and the search stops at once. The nodes
follow from the GPUs a node has (`NodeSize`: spec, user config, else assumed and said so)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from tunelab.catalog import DEFAULT_NODE_GPUS, GPU, Architecture, resolve_architecture
from tunelab.estimate.memory import MemoryInputs
from tunelab.estimate.peak import MemoryFigure, fits, predict_peak
from tunelab.estimate.simulator import StepShape
from tunelab.forecast.runs import run_step
from tunelab.forecast.speed import SCALING_EFFICIENCY
from tunelab.forecast.staged_runs import Lengths, estimate_any_run, stage_runs
from tunelab.fsutil import human_seconds
from tunelab.ledger.history import HistoryRun
from tunelab.rundir.config import RunConfig
from tunelab.rundir.estimate import GpusNeeded, RunEstimate
from tunelab.spec.resources import ResourcesSpec, Strategy

MAX_GPUS = 64  # the search's ceiling: 8 nodes of 8


@dataclass(frozen=True)
class NodeSize:
    """GPUs one node has, and where that figure came from (said beside every node count made with it)."""

    gpus: int
    source: str

    @classmethod
    def assumed(cls) -> NodeSize:
        return cls(DEFAULT_NODE_GPUS, f"assumed: {DEFAULT_NODE_GPUS} GPUs a node, as DGX/HGX servers have; set "
                                      "resources.node_gpus (or node_gpus in the user config) for your cluster")

    @classmethod
    def of(cls, resources: ResourcesSpec, where: str = "resources.node_gpus") -> NodeSize:
        """A run's resources (the user config already merged in): their node_gpus, else the assumption."""
        return cls(resources.node_gpus, where) if resources.node_gpus is not None else cls.assumed()


def nodes_for(gpus: int, node_gpus: int) -> int:
    """Nodes `gpus` GPUs take at most `node_gpus` a node."""
    return max(1, math.ceil(gpus / node_gpus))


def even_nodes(gpus: int, node_gpus: int, at_least: int = 1, processes: int | None = None) -> int | None:
    """The fewest nodes, at least `at_least`, over which `gpus` (and `processes`) split evenly, since a job asks each
    node for the same share; None when no count up to `gpus` does."""
    return next((n for n in range(max(at_least, nodes_for(gpus, node_gpus)), max(gpus, 1) + 1)
                 if gpus % n == 0 and (processes is None or processes % n == 0)), None)


@dataclass(frozen=True)
class GpuSearch:
    """The fewest GPUs that fit and the simulated figures on either side of the boundary."""

    gpus: int
    peak: MemoryFigure  # per GPU on `gpus` GPUs (FSDP when more than one): fits
    fewer: MemoryFigure | None  # per GPU on gpus - 1: does not fit (None when gpus is 1)

    @property
    def strategy(self) -> Strategy | None:
        return Strategy.FSDP if self.gpus > 1 else None


def fewest_gpus(model: str | Path, inputs: MemoryInputs, shape: StepShape, gpu_memory_gib: float,
                arch: Architecture | None = None, limit: int = MAX_GPUS) -> GpuSearch | None:
    """The fewest GPUs on which this step's peak per GPU fits: one GPU whole, more FSDP-sharded; None when sharding
    cannot bring it under or `limit` GPUs do not fit. Gallops from a predicted count and bisects, so a right prediction
    costs two simulations."""
    arch = arch or resolve_architecture(model)
    seen: dict[int, MemoryFigure] = {}

    def peak(n: int) -> MemoryFigure:
        if n not in seen:
            seen[n] = predict_peak(model, inputs, shape, n, Strategy.FSDP if n > 1 else None, arch)
        return seen[n]

    def ok(n: int) -> bool:
        return fits(peak(n), gpu_memory_gib)

    if ok(1):
        return GpuSearch(1, peak(1), None)
    guess = _predicted_count(peak(1), gpu_memory_gib, arch.layers, limit)
    if guess is None:
        return None
    lo, hi, step = 1, guess, 1  # lo: known not to fit; hi: the candidate
    if ok(hi):
        while hi - step > lo and ok(hi - step):  # down from the guess until one does not fit
            hi, step = hi - step, step * 2
        lo = max(lo, hi - step)
    else:
        lo = hi
        while not ok(hi := min(lo + step, limit)):  # up from the guess until one fits
            if hi >= limit:
                return None
            lo, step = hi, step * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return GpuSearch(hi, peak(hi), peak(lo))


def _predicted_count(one: MemoryFigure, gpu_memory_gib: float, layers: int, limit: int) -> int | None:
    """The GPU count at which one GPU's peak, less (1 - 1/n) of what FSDP shards plus the two layers it gathers whole,
    meets the GPU's memory; None when even all of it sharded leaves too much (no count fits, nothing more is simulated).
    Analytic figures give 2, the search's start."""
    sim = one.simulated
    if sim is None:
        return 2
    shardable = (sim.weights + sim.trainable + sim.optimizer) / 2**30
    excess = one.required_gib - gpu_memory_gib
    if excess >= shardable:
        return None
    room = shardable - excess - 2 * sim.weights / 2**30 / max(layers, 1)
    return min(max(2, math.ceil(shardable / room)), limit) if room > 0 else limit


@dataclass(frozen=True)
class TimeOn:
    """The training's time on the GPUs a GpusNeeded suggests, with its source."""

    seconds: float | None
    source: str
    gpu_hours: float | None = None


def gpus_needed(search: GpuSearch, micro_batch: int, gpu_memory_gib: float, node: NodeSize,
                time: TimeOn | None = None) -> GpusNeeded:
    """The typed record plan, plan.md, `plan --json`, the MCP tools and `tunelab estimate` carry."""
    nodes = nodes_for(search.gpus, node.gpus)
    return GpusNeeded(
        gpus=search.gpus, micro_batch=micro_batch, peak_memory_gib=round(search.peak.required_gib, 2),
        fewer_peak_memory_gib=round(search.fewer.required_gib, 2) if search.fewer else None,
        gpu_memory_gib=round(gpu_memory_gib, 3), strategy=search.strategy, node_gpus=node.gpus,
        node_gpus_source=node.source, nodes=nodes, gpus_per_run=nodes * math.ceil(search.gpus / nodes),
        seconds=time.seconds if time else None, time_source=time.source if time else "",
        gpu_hours=time.gpu_hours if time else None)


def scaled_time(one_gpu_seconds: float, gpus: int, what: str) -> TimeOn:
    """A one-GPU time carried to `gpus` GPUs at the scaling assumption the plan uses (speed.SCALING_EFFICIENCY)."""
    efficiency = SCALING_EFFICIENCY if gpus > 1 else 1.0
    seconds = one_gpu_seconds / (gpus * efficiency)
    source = what + (f"; {gpus} GPUs at {efficiency:.0%} scaling efficiency (assumed: measured history "
                     "replaces it)" if gpus > 1 else "")
    return TimeOn(round(seconds, 1), source, round(seconds * gpus / 3600, 4))


def describe(need: GpusNeeded) -> str:
    """One line: the GPUs, the boundary's evidence, the nodes and their source, the time."""
    fewer = (f"; on {need.gpus - 1}: {need.fewer_peak_memory_gib:.1f} GiB, does not fit"
             if need.fewer_peak_memory_gib is not None else "")
    sharded = "FSDP-sharded " if need.gpus > 1 else ""
    text = (f"fewest GPUs that fit micro-batch {need.micro_batch}: {need.gpus} ({sharded}peak "
            f"{need.peak_memory_gib:.1f} GiB per GPU of {need.gpu_memory_gib:.1f}{fewer}) = {need.nodes} node(s) "
            f"of {need.node_gpus} GPUs ({need.node_gpus_source})")
    if need.gpus_per_run != need.gpus:
        text += f"; {need.gpus_per_run} GPUs split evenly over the {need.nodes} nodes"
    if need.seconds is not None:
        text += f"; time on {need.gpus_per_run}: {human_seconds(need.seconds)} ({need.time_source})"
    return text


def on_gpus(cfg: RunConfig, gpus: int) -> RunConfig:
    """The run as it would train on `gpus` GPUs, FSDP-sharded (an estimate's what-if: never scaffolded)."""
    res = cfg.resources.model_copy(update={"gpus_per_run": gpus, "nproc_per_run": None,
                                           "distributed": Strategy.FSDP if gpus > 1 else "auto"})
    return cfg.model_copy(update={"resources": res})


def sized_estimate(cfg: RunConfig, gpu: GPU | None, lengths: Lengths, history: list[HistoryRun], node: NodeSize,
                   cpu_threads: int | None = None) -> RunEstimate:
    """The run's estimate and, where its peak does not fit its GPUs, the fewest GPUs that fit with the time on them."""
    est = estimate_any_run(cfg, gpu, lengths, history, cpu_threads)
    if gpu is None or est.peak_memory_gib is None or est.peak_memory_gib <= gpu.memory_gib:
        return est
    found: list[tuple[GpuSearch, int]] = []
    for part in stage_runs(cfg):
        inputs, shape = run_step(part, gpu, max(lengths(part)[0], default=None))
        search = fewest_gpus(part.model.path, inputs, shape, gpu.memory_gib)
        if search is None:
            return est  # sharding does not help: the warning and validate say what does
        found.append((search, part.training.batch_size if part.training else 0))
    search, micro_batch = max(found, key=lambda f: f[0].gpus)
    need = gpus_needed(search, micro_batch, gpu.memory_gib, node)
    at = estimate_any_run(on_gpus(cfg, need.gpus_per_run), gpu, lengths, history, cpu_threads)
    est.gpus_needed = need.model_copy(update={"seconds": at.seconds, "time_source": at.time_source,
                                              "gpu_hours": at.gpu_hours})
    return est
