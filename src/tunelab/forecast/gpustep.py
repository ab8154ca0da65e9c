"""A GPU training step priced from measured rows of that GPU model (gpu_rows/*.json), not an assumed MFU: most of a
small step is a fixed cost, not FLOPs (docs/benchmarks.md).

One micro-batch takes √(F² + G²): F, the host dispatching the step's operators (f seconds × `GpuWork.operators`), and G,
the FLOPs at a measured efficiency per attention group (per-sequence kernels, or a dense packed mask). Kernels launch
asynchronously, so dispatch and GPU work overlap and a step takes between max(F, G) and F + G; the quadrature sum fits
both ends of the rows where F + G does not (benchmarks/gpu_speed_fit.py). t² = f²·u² + c²/e² is linear in f² and 1/e²,
solved by least squares on the relative error.

The rows are their GPU model's priors (kind `carried`), spread by the fit's leave-one-out error; a GPU without rows
takes the nearest measured GPU's fit scaled by peak (kind `model`). History or a probe replaces both."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import StrEnum
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from tunelab.catalog import GPU, Architecture, resolve_architecture, resolve_gpu
from tunelab.errors import TunelabError
from tunelab.forecast.speed import RECOMPUTE_FACTOR, flops_per_token
from tunelab.models.attention import AttentionKind, resolve_attention
from tunelab.rundir.estimate import SourceKind
from tunelab.spec import TrainingConfig

ROWS_DIR = Path(__file__).parent / "gpu_rows"
# Operators a training step dispatches (top-level aten ops: a proxy of a GPU's launches), counted by
# benchmarks/step_cost.py on random-init Llamas through the job's own trainer (docs/benchmarks.md, "Fixed step cost
# on a CPU"; the counts do not depend on the width or the load): 332 a layer with all-linear LoRA, 197 with q,v →
# 27 per adapted module, 143 a layer's own; 189 a step besides, 325 with TRL's fused LM head (a GPU run's): the
# 16-layer all-linear step 325 + 16 × 332 = 5,637, as counted. The H100 rows hold one depth and one target set,
# so they fit f, the seconds per operator, and these counts carry it to other depths and targets.
OPS_PER_STEP = 325
OPS_PER_LAYER = 143
OPS_PER_ADAPTER = 27


class AttentionGroup(StrEnum):
    """How a step's attention runs, as its speed sees it."""

    PER_SEQUENCE = "per-sequence"  # causal kernels per example: SDPA unpacked, varlen, flash_attention_2, flex
    DENSE_MASK = "dense-mask"  # a materialized mask or score matrix: packed rows under SDPA, eager


def attention_group(kind: str, packed: bool) -> AttentionGroup:
    """The group of a resolved attention kind (models/attention.py) with or without packing."""
    resolved = AttentionKind(kind)
    if resolved is AttentionKind.EAGER or (packed and resolved is AttentionKind.SDPA):
        return AttentionGroup.DENSE_MASK
    return AttentionGroup.PER_SEQUENCE


def adapted_per_layer(arch: Architecture, targets: str | list[str] | tuple[str, ...]) -> int:
    """LoRA-adapted linear modules in one decoder layer (estimate/memory.py counts their parameters the same way)."""
    shapes = arch.linear_shapes()
    return len(shapes) if targets == "all-linear" else sum(1 for t in targets if t in shapes)


@dataclass(frozen=True)
class GpuWork:
    """What a step's cost depends on beyond its tokens and FLOPs: its depth, its adapters and its attention."""

    layers: int
    adapted_per_layer: int
    attention: AttentionGroup = AttentionGroup.PER_SEQUENCE

    @property
    def operators(self) -> float:
        """The operators a step dispatches: the fixed cost's unit."""
        return OPS_PER_STEP + self.layers * (OPS_PER_LAYER + OPS_PER_ADAPTER * self.adapted_per_layer)

    @classmethod
    def of_training(cls, arch: Architecture, t: TrainingConfig) -> GpuWork:
        kind = resolve_attention(t.attention, t.packing).kind.value
        return cls(arch.layers, adapted_per_layer(arch, t.lora_target_modules), attention_group(kind, t.packing))


class MeasuredRow(BaseModel):
    """One shape the GPU kit measured (benchmarks/gpu_truth.py), as copied from its result file."""

    model_config = ConfigDict(extra="forbid")

    name: str
    source: str  # the result file it was copied from
    arch: str  # a catalog architecture
    layers: int
    lora_rank: int
    lora_targets: str  # all-linear, or comma-separated module names
    batch: int
    seq_len: int
    packed: bool
    attention: AttentionKind  # the kernel it trained with (the kit's attention_resolved)
    checkpointing: bool
    steps: int
    tokens_per_step: float  # one micro-batch: the kit's rows do not accumulate
    tokens_per_s: float  # measured, over every timed step

    @property
    def step_s(self) -> float:
        return self.tokens_per_step / self.tokens_per_s

    def work(self) -> GpuWork:
        arch = resolve_architecture(self.arch)
        targets = "all-linear" if self.lora_targets == "all-linear" else self.lora_targets.split(",")
        return GpuWork(self.layers, adapted_per_layer(arch, targets), attention_group(self.attention, self.packed))

    def flops(self) -> float:
        """The step's FLOPs by forecast/speed.py (the planner's formula) at the row's depth."""
        arch = replace(resolve_architecture(self.arch), layers=self.layers)  # the kit's shallow copies too
        return (flops_per_token(arch, self.seq_len) * self.tokens_per_step
                * (RECOMPUTE_FACTOR if self.checkpointing else 1.0))


class RowFile(BaseModel):
    """The measured rows of one GPU model on one date."""

    model_config = ConfigDict(extra="forbid")

    gpu: str  # the catalog's GPU name
    device: str  # what the driver called it
    measured_on: str
    how: str
    source: str
    rows: list[MeasuredRow]


def load_rows(path: Path) -> RowFile:
    """A row file, or a TunelabError naming the file and the field at fault."""
    try:
        return RowFile.model_validate_json(path.read_text())
    except ValidationError as exc:
        err = exc.errors()[0]
        raise TunelabError(err["msg"], file=path, field=".".join(str(p) for p in err["loc"])) from None


@lru_cache(maxsize=1)
def committed_rows() -> tuple[RowFile, ...]:
    """Every GPU model's measured rows shipped with tunelab."""
    files = tuple(load_rows(p) for p in sorted(ROWS_DIR.glob("*.json")))
    if not files:
        raise TunelabError("no measured GPU rows shipped (the package data is missing)", file=ROWS_DIR)
    return files


POWER = 2  # how F and G combine: (F^p + G^p)^(1/p); 2, the quadrature sum (1 would be F + G: the module says why)


@dataclass(frozen=True)
class StepPoint:
    """A measured row as the fit sees it: operators, FLOPs' seconds at peak, measured seconds, attention group."""

    name: str
    operators: float
    peak_s: float  # the step's FLOPs at 100 % of the dense bf16 peak
    step_s: float
    attention: AttentionGroup


def points_of(rows: list[MeasuredRow], peak_tflops: float) -> list[StepPoint]:
    return [StepPoint(r.name, (w := r.work()).operators, r.flops() / (peak_tflops * 1e12), r.step_s, w.attention)
            for r in rows]


@dataclass(frozen=True)
class StepFit:
    """The fixed cost per operator and the efficiency per attention group fitted on rows measured at `peak_tflops`."""

    fixed_per_op_s: float
    efficiency: dict[AttentionGroup, float]
    peak_tflops: float
    power: int = POWER

    def fixed_s(self, work: GpuWork) -> float:
        return self.fixed_per_op_s * work.operators

    def efficiency_of(self, group: AttentionGroup) -> float:
        """The group's efficiency; a group the rows never ran takes the per-sequence one (the faster), else any."""
        return self.efficiency.get(group) or self.efficiency.get(AttentionGroup.PER_SEQUENCE) or max(
            self.efficiency.values())

    def compute_s(self, work: GpuWork, flops: float, peak_tflops: float | None = None) -> float:
        """The FLOPs' seconds at the group's efficiency of a peak (the rows' own unless another GPU's is given)."""
        return flops / ((peak_tflops or self.peak_tflops) * 1e12 * self.efficiency_of(work.attention))

    def combine(self, fixed_s: float, compute_s: float) -> float:
        """One micro-batch: (F^p + G^p)^(1/p)."""
        return (fixed_s ** self.power + compute_s ** self.power) ** (1 / self.power)

    def step_s(self, work: GpuWork, flops: float, peak_tflops: float | None = None) -> float:
        return self.combine(self.fixed_s(work), self.compute_s(work, flops, peak_tflops))

    def predict(self, point: StepPoint) -> float:
        """A measured row's step as the fit prices it."""
        return self.combine(self.fixed_per_op_s * point.operators, point.peak_s / self.efficiency_of(point.attention))


def fit_points(points: list[StepPoint], peak_tflops: float, power: int = POWER) -> StepFit:
    """Least squares of t^p = f^p·u^p + c^p / e_g^p in (f^p, 1/e_g^p), each row's equation divided by its t^p (the
    relative error: a 100 ms row weighs as much as an 800 ms one). ValueError when the rows cannot fit it."""
    groups = sorted({p.attention for p in points})
    if len(points) < 1 + len(groups):
        raise ValueError(f"{len(points)} rows cannot fit a fixed cost and {len(groups)} efficiencies")
    import numpy as np  # here: status and results import this module and must not load numpy (test_cli_daily)

    design = np.array([[(p.operators / p.step_s) ** power]
                       + [(p.peak_s / p.step_s) ** power if p.attention is g else 0.0 for g in groups]
                       for p in points])
    solved, *_ = np.linalg.lstsq(design, np.ones(len(points)), rcond=None)
    if any(v <= 0 for v in solved):
        raise ValueError(f"the rows fit a non-positive fixed cost or efficiency ({list(map(float, solved))})")
    return StepFit(float(solved[0]) ** (1 / power),
                   {g: float(v) ** (-1 / power) for g, v in zip(groups, solved[1:])}, peak_tflops, power)


def leave_one_out(points: list[StepPoint], peak_tflops: float, power: int = POWER) -> list[float]:
    """Each row's log error, measured / predicted, by the fit on the other rows."""
    return [math.log(p.step_s / fit_points(points[:i] + points[i + 1:], peak_tflops, power).predict(p))
            for i, p in enumerate(points)]


def rms(values: list[float]) -> float:
    """The root mean square of log errors about zero (a bias is an error too): the σ of the fit's predictions."""
    return math.sqrt(sum(v * v for v in values) / len(values)) if values else 0.0


@dataclass(frozen=True)
class GpuPrior:
    """One GPU model's measured rows, their fit and its leave-one-out σ."""

    rows: RowFile
    gpu: GPU
    fit: StepFit
    spread: float


def prior_of(rows: RowFile, where: Path | str) -> GpuPrior:
    """The fit of one row file (`where` names it in errors)."""
    try:
        gpu = resolve_gpu(rows.gpu)
    except TunelabError as exc:
        raise TunelabError(exc.message, file=where, field="gpu") from None
    points = points_of(rows.rows, gpu.bf16_tflops)
    try:
        return GpuPrior(rows, gpu, fit_points(points, gpu.bf16_tflops), rms(leave_one_out(points, gpu.bf16_tflops)))
    except ValueError as exc:
        raise TunelabError(str(exc), file=where, field="rows") from None


@lru_cache(maxsize=1)
def committed_priors() -> tuple[GpuPrior, ...]:
    return tuple(prior_of(rows, ROWS_DIR / f"{rows.gpu}-{rows.measured_on}") for rows in committed_rows())


def prior_for(gpu: GPU, priors: tuple[GpuPrior, ...]) -> GpuPrior | None:
    """The GPU's own rows, else the measured GPU nearest in dense bf16 peak (None: no peak to carry by)."""
    own = [p for p in priors if p.gpu.name == gpu.name]
    if own or not gpu.bf16_tflops or not priors:
        return own[-1] if own else None
    return min(priors, key=lambda p: abs(math.log(p.gpu.bf16_tflops / gpu.bf16_tflops)))


@dataclass(frozen=True)
class GpuStepSpeed:
    """Tokens/s on a GPU from the measured rows' fit, in words, its kind and its spread (log-space σ)."""

    tokens_per_s: float
    step_s: float
    source: str
    kind: SourceKind
    spread: float


def gpu_step_speed(arch: Architecture, gpu: GPU, tokens_per_step: float, seq_len: int, work: GpuWork,
                   micro_batches: int = 1, recompute: bool = False,
                   priors: tuple[GpuPrior, ...] | None = None) -> GpuStepSpeed | None:
    """An optimizer step of `micro_batches` micro-batches (each its own fixed cost: its own dispatch), the FLOPs of
    `tokens_per_step` tokens at `seq_len`; None where no rows carry to this GPU (no peak known)."""
    prior = prior_for(gpu, committed_priors() if priors is None else priors)
    if prior is None:
        return None
    fit, n = prior.fit, max(micro_batches, 1)
    factor = RECOMPUTE_FACTOR if recompute else 1.0
    flops = flops_per_token(arch, seq_len) * tokens_per_step / n * factor
    step = n * fit.step_s(work, flops, gpu.bf16_tflops)
    e = fit.efficiency_of(work.attention)
    fixed, compute = fit.fixed_s(work) * 1e3, fit.compute_s(work, flops, gpu.bf16_tflops) * 1e3
    words = (f"{len(prior.rows.rows)} rows measured on {prior.gpu.name} ({prior.rows.measured_on}): a micro-batch "
             f"√(F² + G²) of {fixed:.0f} ms fixed ({work.operators:,.0f} operators at {fit.fixed_per_op_s * 1e6:.1f} µs: "
             f"{work.layers} layers, {work.adapted_per_layer} adapted modules each) "
             f"and {compute:.0f} ms of FLOPs at {e:.0%} of {gpu.bf16_tflops:g} TFLOPS ({work.attention} attention)"
             f"{f', gradient checkpointing ×{RECOMPUTE_FACTOR:g} (assumed)' if recompute else ''}"
             f"{f', × {n} micro-batches' if n > 1 else ''}; leave-one-out σ {prior.spread:.2f}")
    if prior.gpu.name == gpu.name:
        return GpuStepSpeed(tokens_per_step / step, step, f"fit of {words}; history or `tunelab probe` on this GPU "
                            "replaces it", SourceKind.CARRIED, prior.spread)
    return GpuStepSpeed(tokens_per_step / step, step, f"model: fit of {words}, carried to {gpu.name} by the ratio of "
                        f"their peaks ({gpu.bf16_tflops:g} vs {prior.gpu.bf16_tflops:g} TFLOPS)", SourceKind.MODEL,
                        prior.spread)
