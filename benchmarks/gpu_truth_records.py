"""The GPU kit's result file (benchmarks/gpu_truth.py): one JSON document per GPU and date, typed here and
read back by the kit (to skip finished shapes), by its test, and by the table renderer (docs/benchmarks.md).

Every shape row holds what the device measured, what the simulator and the FLOPs model predicted for the same
shape, and the error of each prediction: (predicted − measured) / measured.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tunelab.rundir.memory import MemoryKind

SCHEMA = 1
Status = Literal["ok", "oom", "failed", "skipped"]
# A row with one of these is not measured again: measured, or out of memory (a result beside the simulator's
# verdict). A failed row is tried again by the next call (after the rows never tried), and a skipped one too.
FINAL: tuple[str, ...] = ("ok", "oom")


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Measured(_Record):
    """Read on the device by tunelab's probe (`python -m tunelab.train.probe_steps --steps=N`)."""

    status: Status
    error: str | None = None  # the out-of-memory or failure line, the reason a row was skipped
    device: str | None = None
    memory_kind: str | None = None  # a tunelab MemoryKind (older records: cpu_max_rss for host_max_rss)
    allocated_gib: float | None = None  # torch.cuda.max_memory_allocated over the timed steps
    reserved_gib: float | None = None  # torch.cuda.max_memory_reserved over the timed steps
    nvml_used_gib: float | None = None  # NVML used by the probe process after the timed steps
    context_gib: float | None = None  # NVML used − reserved after a first matmul
    context_after_gib: float | None = None  # the same after the timed steps
    rss_peak_gib: float | None = None  # CPU: the probe process's peak resident memory
    tokens_per_s: float | None = None  # over every timed step
    median_step_s: float | None = None
    tokens_per_step: float | None = None  # median
    mfu: float | None = None  # tokens/s × FLOPs per token ÷ the GPU's dense bf16 peak
    max_micro_batch: int | None = None  # --find-max-batch rows: the largest that ran a real step
    memory_trace_gib: list[float] = Field(default_factory=list)  # each timed step: peak reserved (GPU) / RSS (CPU)
    wall_s: float = 0.0  # the probe process, start to end


class Simulated(_Record):
    """tunelab's own predictions for the same shape (estimate.peak.predict_peak, estimate.speed)."""

    allocated_gib: float | None = None
    reserved_gib: float | None = None
    context_gib: float | None = None
    required_gib: float | None = None  # reserved + context: what must fit, compared with NVML used
    source: str = ""
    dtype: str = "bfloat16"  # simulated in (a CUDA step: the CPU smoke's rows too, which train in float32)
    fits: bool | None = None  # on the GPU measured (None: no GPU, or the simulation failed)
    max_micro_batch: int | None = None
    # the planner's first-contact speed: the GPU step model (forecast/gpustep.py; records before it: the FLOPs
    # model at the default MFU), its words, and whether it was fitted on this very row (its error then a residual)
    tokens_per_s: float | None = None
    speed_source: str = ""
    speed_fitted_on_row: bool | None = None
    seconds: float = 0.0


class Errors(_Record):
    """(simulated − measured) / measured per term; None where either side is missing."""

    allocated: float | None = None
    reserved: float | None = None
    context: float | None = None
    context_after: float | None = None
    nvml_used: float | None = None
    tokens_per_s: float | None = None
    max_micro_batch: float | None = None
    verdict_agrees: bool | None = None  # simulated fits == measured ran (an OOM row's verdict)


class ShapeResult(_Record):
    name: str
    case: int  # the grid number (1-8)
    title: str
    arch: str
    layers: int
    lora_rank: int
    lora_targets: str
    batch: int
    seq_len: int
    packed: bool
    lengths: str
    attention: str  # as asked in the run
    attention_resolved: str  # the kernel it trained with
    checkpointing: bool
    quantize: str | None
    qlora_frozen_dtype: str | None = None
    dtype: str
    steps: int
    flops_per_token: float
    estimated_s: float  # expected seconds when it was started
    elapsed_s: float  # build (if this row built its model), measurement and simulation
    measured: Measured
    simulated: Simulated
    errors: Errors
    finished_at: str


class KitFile(_Record):
    schema_version: int = SCHEMA
    gpu: str | None  # the catalog's name of the GPU (None: CPU, or a GPU the catalog lacks)
    device: str  # what the driver calls it, or "cpu"
    bf16_peak_tflops: float | None  # the catalog's dense bf16 peak the MFU is taken against
    mfu_formula: str
    cpu_smoke: bool
    started_at: str
    versions: dict[str, str]
    shapes: list[ShapeResult] = Field(default_factory=list)
    killed_s: dict[str, float] = Field(default_factory=dict)  # shapes stopped at the budget: seconds they had run

    def finished(self) -> set[str]:
        return {s.name for s in self.shapes if s.measured.status in FINAL}

    def put(self, row: ShapeResult) -> None:
        self.shapes = [s for s in self.shapes if s.name != row.name] + [row]
        self.killed_s.pop(row.name, None)


def load_kit(path: Path) -> KitFile:
    return KitFile.model_validate_json(path.read_text())


def save_kit(path: Path, kit: KitFile) -> None:
    from tunelab.fsutil import atomic_write_text

    atomic_write_text(path, kit.model_dump_json(indent=1) + "\n")


def error_of(predicted: float | None, measured: float | None) -> float | None:
    if predicted is None or measured is None or measured == 0:
        return None
    return round((predicted - measured) / measured, 4)


# ---- tables -------------------------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:+.1f} %"


def _cell(measured: float | None, simulated: float | None, error: float | None) -> str:
    return f"{_num(measured)} / {_num(simulated)} ({_pct(error)})"


def shapes_table(kit: KitFile) -> str:
    """Every shape: measured / simulated GiB (error) per term, tokens/s measured / predicted (error) and MFU, as
    markdown."""
    head = ("| shape | status | allocated | reserved | NVML used / required | context: matmul, after / assumed "
            "| tokens/s measured / predicted (error) | MFU | max micro-batch |")
    lines = [f"GPU kit on {kit.device} ({kit.gpu or 'not in the catalog'}; dense bf16 peak "
             f"{_num(kit.bf16_peak_tflops, 0)} TFLOPS). GiB measured / simulated (error); tokens/s as a plan with "
             f"no history predicts it (forecast/gpustep.py; * a row the step model was fitted on: a residual).", "",
             head, "|" + "---|" * 9]
    for s in kit.shapes:
        m, p, e = s.measured, s.simulated, s.errors
        status = m.status if m.error is None else f"{m.status}: {m.error[:60]}"
        fits = "" if p.fits is None else (" (sim: fits)" if p.fits else " (sim: OOM)")
        on_host = MemoryKind.read(m.memory_kind) is MemoryKind.HOST_MAX_RSS
        memory = (_cell(m.allocated_gib, p.allocated_gib, e.allocated) if not on_host
                  else f"RSS {_num(m.rss_peak_gib)} / {_num(p.allocated_gib)}")
        lines.append(
            f"| {s.name} | {status}{fits} | {memory} | {_cell(m.reserved_gib, p.reserved_gib, e.reserved)} "
            f"| {_cell(m.nvml_used_gib, p.required_gib, e.nvml_used)} "
            f"| {_num(m.context_gib)}, {_num(m.context_after_gib)} / {_num(p.context_gib)} "
            f"| {_speed_cell(m, p, e)} | {_num(m.mfu, 3)} "
            f"| {m.max_micro_batch if m.max_micro_batch is not None else '—'} / "
            f"{p.max_micro_batch if p.max_micro_batch is not None else '—'} |")
    return "\n".join(lines) + "\n"


def _speed_cell(m: Measured, p: Simulated, e: Errors) -> str:
    """tokens/s measured / predicted (error), * where the step model was fitted on this row."""
    mark = "*" if p.speed_fitted_on_row else ""
    return f"{_num(m.tokens_per_s, 0)} / {_num(p.tokens_per_s, 0)}{mark} ({_pct(e.tokens_per_s)})"


TERMS = (("max_memory_allocated", "allocated"), ("max_memory_reserved", "reserved"),
         ("NVML used vs reserved + context", "nvml_used"), ("CUDA context after a first matmul", "context"),
         ("CUDA context after the steps", "context_after"),
         ("tokens/s vs the planner's first contact", "tokens_per_s"), ("largest micro-batch", "max_micro_batch"))


def readme_table(kit: KitFile) -> str:
    """docs/benchmarks.md's "Measured on a GPU" table: per term, the median error of the simulator over the
    shapes that measured it (and its spread), the OOM verdicts, and the median MFU."""
    lines = [f"Measured on {kit.device} ({kit.gpu or 'not in the catalog'}), {kit.started_at[:10]}, "
             f"torch {kit.versions.get('torch', '?')}, transformers {kit.versions.get('transformers', '?')}:", "",
             "| term | shapes | median error | median abs error | range |", "|---|---|---|---|---|"]
    for label, field in TERMS:
        errs = [getattr(s.errors, field) for s in kit.shapes if getattr(s.errors, field) is not None]
        if errs:
            lines.append(f"| {label} | {len(errs)} | {_pct(statistics.median(errs))} | "
                         f"{statistics.median([abs(x) for x in errs]) * 100:.1f} % | "
                         f"{_pct(min(errs))} … {_pct(max(errs))} |")
    verdicts = [s.errors.verdict_agrees for s in kit.shapes if s.errors.verdict_agrees is not None]
    mfus = [s.measured.mfu for s in kit.shapes if s.measured.mfu is not None]
    lines.append("")
    lines.append(f"Fits / OOM verdicts agreeing: {sum(verdicts)}/{len(verdicts)}; median MFU "
                 f"{_num(statistics.median(mfus), 3) if mfus else '—'} against {_num(kit.bf16_peak_tflops, 0)} "
                 f"TFLOPS dense bf16 ({kit.mfu_formula}).")
    return "\n".join(lines) + "\n"
