"""What a profiled training step is made of, part by part: torch.profiler events attributed to the innermost labelled
part they ran in (by time, so backward's operators on autograd's thread count as backward).

A small LoRA step is mostly fixed host cost (docs/benchmarks.md). The count of aten operators a part dispatches is a
proxy of its launches that a CPU measures as well as a GPU and a shared machine's load cannot change; host milliseconds
are shown beside it."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

LABEL_PREFIX = "part:"
SYNC_OPS = frozenset({"aten::_local_scalar_dense"})  # what .item(), int(t), bool(t) run (a CPU's count of syncs)
# a GPU's: the host waiting for the device (.item() is one of them; so is .tolist(), which a CPU runs no operator for)
CUDA_SYNCS = frozenset({"cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize"})
LAUNCHES = frozenset({"cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx"})
TRACE_FILE, OPS_TEXT, OPS_JSON, PARTS_JSON, PARTS_TEXT = (
    "trace.json.gz", "ops.txt", "ops.json", "parts.json", "parts.txt")  # torch gzips a trace named .gz


class Part(StrEnum):
    """The parts of an optimizer step, in the order the Trainer's loop runs them."""

    DATA = "data"  # fetching the step's micro-batches (Trainer.get_batch_samples), collation aside
    COLLATE = "collate"  # the data collator, where it runs in this process (no dataloader workers)
    COUNTING = "counting"  # tunelab's per-micro-batch counts (loop_hooks: count_batch, record_seen)
    FORWARD = "forward"  # compute_loss: the model's forward, the loss, TRL's per-step metrics and their syncs
    BACKWARD = "backward"
    STEP_OTHER = "training_step_other"  # the rest of Trainer.training_step: inputs to the device, loss scaling
    CLIP = "clip_grad_norm"
    OPTIMIZER = "optimizer_step"  # AdamW over the trainable (LoRA) tensors: torch's own label
    SCHEDULER = "lr_scheduler"
    ZERO_GRAD = "zero_grad"
    CALLBACKS_TUNELAB = "callbacks_tunelab"  # tunelab's callbacks: metrics.jsonl, status.json, checkpoint policy
    CALLBACKS_OTHER = "callbacks_other"  # the Trainer's own callbacks (DefaultFlowCallback, ...)
    LOGGING = "log_save_evaluate"  # Trainer._maybe_log_save_evaluate, callbacks aside: the loss's .item() at a log
    LOOP_OTHER = "loop_other"  # the rest of the step: the NaN filter's syncs, FLOPs, accelerate's bookkeeping

    @property
    def owner(self) -> str:
        return "tunelab" if self in (Part.COUNTING, Part.CALLBACKS_TUNELAB) else "library"


_TORCH_LABELS = (("Optimizer.step#", Part.OPTIMIZER), ("Optimizer.zero_grad#", Part.ZERO_GRAD))


@dataclass
class PartCost:
    """One part, per step (means over the profiled steps): aten operators dispatched (top-level calls), syncs, kernel
    launches and device milliseconds (None without CUDA), host milliseconds of the main thread outside nested parts;
    `calls`: its labelled intervals."""

    part: Part
    owner: str
    calls: int = 0
    ops: float = 0.0
    syncs: float = 0.0
    host_ms: float = 0.0
    kernels: float | None = None
    device_ms: float | None = None


@dataclass
class StepProfile:
    """parts.json: the profiled steps' mean cost by part."""

    steps: int
    device: str
    step_ms: float  # mean wall time of a profiled step (profiler overhead included)
    parts: list[PartCost] = field(default_factory=list)
    note: str = ""

    @property
    def ops(self) -> float:
        return sum(p.ops for p in self.parts)

    @property
    def syncs(self) -> float:
        return sum(p.syncs for p in self.parts)

    def part(self, part: Part) -> PartCost:
        return next(p for p in self.parts if p.part == part)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ops": round(self.ops, 2), "syncs": round(self.syncs, 2)}


@dataclass(order=True)
class _Interval:
    start: float
    end: float
    part: Part | None = field(compare=False)  # None: a whole step (the profiler's ProfilerStep)
    child_us: float = field(default=0.0, compare=False)


def _label_of(name: str) -> Part | None:
    if name.startswith(LABEL_PREFIX):
        return Part(name.removeprefix(LABEL_PREFIX))
    return next((part for prefix, part in _TORCH_LABELS if name.startswith(prefix)), None)


def _intervals(events: Iterable[Any]) -> list[_Interval]:
    """The steps and the labelled parts, outer before inner where they start together."""
    out = []
    for e in events:
        if e.name.startswith("ProfilerStep"):  # ProfilerStep#N, named ProfilerStep* in events()
            out.append(_Interval(e.time_range.start, e.time_range.end, None))
        elif (part := _label_of(e.name)) is not None:
            out.append(_Interval(e.time_range.start, e.time_range.end, part))
    return sorted(out, key=lambda i: (i.start, -i.end))


def summarize(events: list[Any], device: str, note: str = "") -> StepProfile:
    """Each event attributed to the innermost interval it started in (a sweep over both, by start time)."""
    intervals = _intervals(events)
    steps = [i for i in intervals if i.part is None]
    cuda = device != "cpu"
    costs = {p: PartCost(p, p.owner, kernels=0.0 if cuda else None, device_ms=0.0 if cuda else None) for p in Part}
    stack: list[_Interval] = []
    pending = iter(intervals)
    nxt = next(pending, None)
    for e in sorted(events, key=lambda e: e.time_range.start):
        t = e.time_range.start
        while nxt is not None and nxt.start <= t:
            _open(stack, nxt, costs)
            nxt = next(pending, None)
        while stack and stack[-1].end <= t:  # intervals are [start, end)
            stack.pop()
        if not stack:
            continue  # outside the profiled steps
        cost = costs[stack[-1].part or Part.LOOP_OTHER]
        _count(e, cost)
    while nxt is not None:  # intervals after the last event still take their time
        _open(stack, nxt, costs)
        nxt = next(pending, None)
    for i in intervals:
        costs[i.part or Part.LOOP_OTHER].host_ms += (i.end - i.start - i.child_us) / 1000
    n = max(1, len(steps))
    parts = [_per_step(c, n) for c in costs.values()]
    step_ms = sum(s.end - s.start for s in steps) / n / 1000
    return StepProfile(steps=len(steps), device=device, step_ms=round(step_ms, 3), parts=parts, note=note)


def _open(stack: list[_Interval], interval: _Interval, costs: dict[Part, PartCost]) -> None:
    """Push an interval, charging its length to the interval it is nested in (that one's exclusive time shrinks)."""
    while stack and stack[-1].end <= interval.start:  # one that ends where this starts is not its parent
        stack.pop()
    if stack:
        stack[-1].child_us += interval.end - interval.start
    if interval.part is not None:
        costs[interval.part].calls += 1
    stack.append(interval)


def _count(e: Any, cost: PartCost) -> None:
    parent = e.cpu_parent  # an op at the top of the aten:: calls counts once, its inner aten:: calls not again
    if e.name.startswith("aten::") and (parent is None or not parent.name.startswith("aten::")):
        cost.ops += 1
    if e.name in (SYNC_OPS if cost.kernels is None else CUDA_SYNCS):
        cost.syncs += 1
    if cost.kernels is not None and e.name in LAUNCHES:
        cost.kernels += 1
    if cost.device_ms is not None and e.name.startswith("aten::"):
        cost.device_ms += float(getattr(e, "self_device_time_total", 0.0) or 0.0) / 1000


def _per_step(c: PartCost, n: int) -> PartCost:
    def mean(v: float | None) -> float | None:
        return None if v is None else round(v / n, 3)

    return PartCost(c.part, c.owner, c.calls, round(c.ops / n, 2), round(c.syncs / n, 2), round(c.host_ms / n, 3),
                    mean(c.kernels), mean(c.device_ms))


def parts_table(profile: StepProfile) -> str:
    """parts.txt: one line per part, per step."""
    cuda = profile.device != "cpu"
    head = f"{'part':<22}{'owner':<9}{'calls':>6}{'ops':>9}{'syncs':>7}{'host ms':>9}"
    head += f"{'kernels':>9}{'cuda ms':>9}" if cuda else ""
    lines = [f"{profile.steps} steps on {profile.device}, {profile.step_ms:.1f} ms a step (profiler included); "
             "per step:", head]
    for p in profile.parts:
        line = f"{p.part.value:<22}{p.owner:<9}{p.calls:>6}{p.ops:>9.1f}{p.syncs:>7.1f}{p.host_ms:>9.2f}"
        line += f"{p.kernels or 0:>9.1f}{p.device_ms or 0:>9.2f}" if cuda else ""
        lines.append(line)
    lines.append(f"{'total':<22}{'':<9}{'':>6}{profile.ops:>9.1f}{profile.syncs:>7.1f}"
                 f"{sum(p.host_ms for p in profile.parts):>9.2f}")
    if profile.note:
        lines.append(profile.note)
    return "\n".join(lines) + "\n"


def op_rows(averages: Iterable[Any]) -> list[dict[str, Any]]:
    """ops.json: per operator name, its count, self and total CPU time and device time (µs)."""
    rows = [{"name": a.key, "count": a.count, "self_cpu_us": round(a.self_cpu_time_total, 1),
             "cpu_total_us": round(a.cpu_time_total, 1),
             "device_us": round(float(getattr(a, "device_time_total", 0.0) or 0.0), 1),
             "self_device_us": round(float(getattr(a, "self_device_time_total", 0.0) or 0.0), 1)}
            for a in averages]
    return sorted(rows, key=lambda r: -r["self_cpu_us"])


def write_profile(prof: Any, out_dir: Path, profile: StepProfile) -> None:
    """The Chrome trace, the per-operator table (text and JSON) and the per-part summary, into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(out_dir / TRACE_FILE))
    averages = prof.key_averages()
    sort = "self_device_time_total" if profile.device != "cpu" else "self_cpu_time_total"
    (out_dir / OPS_TEXT).write_text(averages.table(sort_by=sort, row_limit=80) + "\n")
    (out_dir / OPS_JSON).write_text(json.dumps(op_rows(averages), indent=1) + "\n")
    (out_dir / PARTS_JSON).write_text(json.dumps(profile.to_json(), indent=1) + "\n")
    (out_dir / PARTS_TEXT).write_text(parts_table(profile))
