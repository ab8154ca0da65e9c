"""A run's training speed from the history: the past runs of this device closest in shape, carried over by FLOPs and
layers, with their kind and spread; rows timed under contention only when nothing else is, corrected and said so. The
FLOPs model where the history has nothing."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from statistics import median
from typing import Any

from tunelab.catalog import GPU, Architecture
from tunelab.forecast.gpustep import GpuWork, gpu_step_speed
from tunelab.forecast.speed import RECOMPUTE_FACTOR as RECOMPUTE_FACTOR  # where forecast/split.py, cpuspeed.py read it
from tunelab.forecast.speed import dense_attention_flops, flops_per_token
from tunelab.host.machine import this_cpu
from tunelab.ledger.history import HistoryRun, cpu_contended
from tunelab.ledger.slowdown import loaded
from tunelab.rundir.estimate import SourceKind
from tunelab.rundir.summary import step_cost_sizes
from tunelab.stats.timing import log_spread, range_sigma


def device_key(gpu: GPU | None) -> str:
    return gpu.name if gpu else "cpu"


def on_device(device: str | None, cpu: str | None, gpu: GPU | None) -> bool:
    """A recorded device ('cpu', or torch's name of a GPU) and CPU model are the planned device: on a CPU, this CPU's
    model (a row that did not record one is kept: unknown is not different, host/machine.this_cpu); a GPU of the same
    model family. The one rule for training, start-up, save and generation rows."""
    dev = (device or "").lower()
    if gpu is None:
        return dev == "cpu" and this_cpu(cpu)
    return dev != "cpu" and gpu.name.split("-")[0].lower() in dev.replace(" ", "")


def same_device(row: HistoryRun, gpu: GPU | None, cpu_threads: int | None) -> bool:
    """A history row of the planned device (`on_device`), on a CPU at the planned threads."""
    return on_device(row.device, row.cpu_model, gpu) and (
        gpu is not None or cpu_threads is None or row.cpu_threads in (None, cpu_threads))


def _nearest(rows: list[HistoryRun], tokens_per_step: float) -> list[HistoryRun]:
    """The past runs closest in tokens per optimizer step (throughput depends on it)."""
    def dist(r: HistoryRun) -> float:
        return abs(math.log((r.tokens_per_step or 1) / max(tokens_per_step, 1)))

    best = min(dist(r) for r in rows)
    return [r for r in rows if dist(r) <= best + 0.1]


def same_targets(rows: list[HistoryRun], t: Any) -> list[HistoryRun]:
    """Rows of the run's LoRA targets (a row that did not record them is kept: unknown is not different)."""
    return [r for r in rows if r.lora_targets is None or r.lora_targets == t.lora_targets_text]


def comparable_rows(rows: list[HistoryRun], t: Any) -> list[HistoryRun]:
    """Rows whose recorded shape matches what speed depends on beyond tokens: gradient checkpointing (a
    recomputed forward) and LoRA targets. A row that did not record a field is kept (unknown is not different)."""
    return [r for r in same_targets(rows, t)
            if r.gradient_checkpointing is None or bool(r.gradient_checkpointing) == t.gradient_checkpointing]


def timed_micro_batches(row: HistoryRun) -> tuple[int, int] | None:
    """The smallest and largest micro-batch a row's split was timed at; None where it did not record its own."""
    b = row.batch_size
    if b is None:
        return None
    sizes = [b, 2 * b] if row.kind == "probed" else [b, *step_cost_sizes(b)]
    return min(sizes), max(sizes)


def covers(row: HistoryRun, micro_batch: int) -> bool:
    """Whether the row timed this micro-batch's neighbourhood (unrecorded: unknown is not different). A step's cost is
    linear in tokens only locally, so a split carried far from where it was timed is priced low."""
    timed = timed_micro_batches(row)
    return timed is None or timed[0] <= micro_batch <= timed[1]


def extrapolation(rows: list[HistoryRun], micro_batch: int | None) -> tuple[str, bool]:
    """('', False) where a row timed this micro-batch; else the words saying it was carried, and whether down."""
    if micro_batch is None or any(covers(r, micro_batch) for r in rows):
        return "", False
    timed = sorted({t for r in rows if (t := timed_micro_batches(r)) is not None})
    below = micro_batch < min(lo for lo, _ in timed)  # timed is not empty: a row that recorded none covers
    return (f"micro-batch {micro_batch} extrapolated{' down' if below else ''} from the micro-batches the rows "
            f"timed, {', '.join(f'{lo}–{hi}' for lo, hi in timed)}", below)


def _kinds(rows: list[HistoryRun]) -> str:
    """'2 probed', '1 measured + 1 ingested': how the rows an estimate rests on were obtained."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.kind] = counts.get(r.kind, 0) + 1
    return " + ".join(f"{n} {kind}" for kind, n in sorted(counts.items())) + " run(s)"


def predicted_step_s(row: HistoryRun, arch: Architecture, tokens_per_step: float, seq_len: int,
                     micro_batches: int | None = None) -> float:
    """Step time from a measured fixed + per-token split carried to another model and batch: the per-token part scales
    with FLOPs per token, the fixed part with the layers and the micro-batches an optimizer step runs."""
    if row.per_token_s is None:
        raise ValueError(f"history row {row.key} has no per-token step cost to carry over")
    row_seq = (row.tokens_per_step or seq_len) / ((row.batch_size or 1) * (row.gradient_accumulation_steps or 1))
    # history keeps hidden, not heads × head_dim: equal for the families in the catalog
    row_flops = dense_attention_flops(row.parameters or 0, row.layers or 0, row.hidden or 0, row_seq)
    per_token = row.per_token_s * flops_per_token(arch, seq_len) / max(row_flops, 1.0)
    fixed = (row.step_fixed_s or 0.0) * (arch.layers + 1) / ((row.layers or arch.layers) + 1)
    if micro_batches is not None:
        fixed *= micro_batches / (row.gradient_accumulation_steps or 1)
    return fixed + per_token * tokens_per_step


@dataclass(frozen=True)
class Speed:
    """A training speed per device with its source, rows, spread (log σ) and what was done for contention."""

    tokens_per_s: float | None
    source: str
    rows: list[HistoryRun]
    kind: SourceKind = SourceKind.ASSUMED
    spread: float = 0.0
    contention: str = ""  # one line when the rows were timed under contention (corrected by their slowdown)
    below_timed: bool = False  # the micro-batch asked about lies below every one the rows timed (`extrapolation`)


def origin_kind(rows: list[HistoryRun]) -> SourceKind:
    return SourceKind.PROBED if rows and all(r.kind == "probed" for r in rows) else SourceKind.MEASURED


def _spread(rows: list[HistoryRun], values: list[float]) -> float:
    """The rows' disagreement and the spread each recorded of its own repeated timings (the probe's)."""
    own = [s for r in rows if (s := getattr(r, "time_spread", None))]
    return max([log_spread(values), *(range_sigma(s) for s in own)], default=0.0)


def uncontended(rows: list[HistoryRun]) -> tuple[list[HistoryRun], str]:
    """The rows timed without others' load; else the loaded rows corrected by their measured (or predicted, a lower
    bound) slowdown, said so. A run that took fewer threads for the load is kept as it is."""
    clean = [r for r in rows if not loaded(r)]
    if clean or not rows:
        return clean, ""
    hit = [r for r in rows if cpu_contended(r)]
    if not hit:
        return rows, ""
    factor = {r.key: r.measured_slowdown or r.slowdown or 1.0 for r in hit}
    return ([_sped_up(r, factor[r.key]) if r.key in factor else r for r in rows],
            contention_note(max(factor.values())))


def contention_note(slowdown: float) -> str:
    """The one line a time timed under contention carries (plan's warnings find it by "under contention")."""
    return (f"timed under contention (others held the cores: up to ×{slowdown:.1f} slower): its times divided by it "
            f"(a lower bound of the load's effect); uncorrected the time is up to ×{slowdown:.1f} — run `tunelab "
            "probe` on a quiet machine")


def _sped_up(r: HistoryRun, slowdown: float) -> HistoryRun:
    """A contended row as if it had had the cores: every time it measured divided by its slowdown."""
    def less(v: float | None) -> float | None:
        return None if v is None else v / slowdown

    return replace(r, tokens_per_s=(r.tokens_per_s or 0.0) * slowdown, per_token_s=less(r.per_token_s),
                   step_fixed_s=less(r.step_fixed_s), startup_s=less(r.startup_s), finish_s=less(r.finish_s))


def speed_from_history(arch: Architecture, gpu: GPU | None, tokens_per_step: float, seq_len: int,
                       history: list[HistoryRun], cpu_threads: int | None = None, micro_batches: int | None = None,
                       recompute: bool = False, micro_batch: int | None = None, work: GpuWork | None = None) -> Speed:
    """Tokens/s per device, its source and rows. micro_batches: the accumulation (a split row's fixed part is paid per
    micro-batch); micro_batch: priced from the rows that timed it where any did, else extrapolated and said so. A GPU
    with no rows: the step model fitted on its measured rows (forecast/gpustep.py)."""
    on_device, contention = uncontended([r for r in history if same_device(r, gpu, cpu_threads) and r.tokens_per_s])
    same = [r for r in on_device if r.of_architecture(arch)]
    split = [r for r in (same or on_device) if r.per_token_s is not None and r.step_fixed_s is not None]
    note = f"; {contention}" if contention else ""
    if split:
        covering = [r for r in split if micro_batch is None or covers(r, micro_batch)]
        beyond, below = ("", False) if covering else extrapolation(split, micro_batch)
        near = _nearest(covering or split, tokens_per_step)
        each = [tokens_per_step / predicted_step_s(r, arch, tokens_per_step, seq_len, micro_batches) for r in near]
        what = "this model" if same else f"{near[0].model}, carried over by FLOPs and layers"
        return Speed(median(each), f"history: {_kinds(near)} of {what} on {device_key(gpu)} (fixed + per-token "
                     f"step cost{'; ' + beyond if beyond else ''}){note}", near,
                     origin_kind(near) if same else SourceKind.CARRIED, _spread(near, each), contention, below)
    if same:
        near = _nearest(same, tokens_per_step)
        each = [r.tokens_per_s for r in near if r.tokens_per_s is not None]  # on_device: all have one
        return Speed(median(each), f"history: {_kinds(near)} of this model on {device_key(gpu)}{note}", near,
                     origin_kind(near), _spread(near, each), contention)
    if on_device:
        near = _nearest(on_device, tokens_per_step)
        ref = near[0]
        if ref.tokens_per_s is not None:  # always: on_device keeps only rows with a throughput
            # dense FLOPs per token ∝ parameters (4N for LoRA): scale the measured throughput by it
            tps = ref.tokens_per_s * (ref.parameters or arch.parameters) / arch.parameters
            return Speed(tps, f"history of {ref.model} on {device_key(gpu)}, scaled by FLOPs per token{note}", near,
                         SourceKind.CARRIED, _spread(near, [r.tokens_per_s or 0.0 for r in near]), contention)
    if gpu is not None:  # the GPU model's measured rows (forecast/gpustep.py), or the nearest GPU's carried to it
        fitted = gpu_step_speed(arch, gpu, tokens_per_step, seq_len,
                                work or GpuWork(arch.layers, len(arch.linear_shapes())), micro_batches or 1, recompute)
        if fitted is not None:
            return Speed(fitted.tokens_per_s, fitted.source, [], fitted.kind, fitted.spread)
    return Speed(None, "none: no history on this device and no FLOPs peak for it", [])
