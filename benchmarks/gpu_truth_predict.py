"""What tunelab predicts for a row of the GPU kit, through the planner's own entry points: the memory
simulator (estimate.peak.predict_peak / largest_micro_batch, with the attention the run resolves to) and the
GPU step model a plan with no history uses (estimate.gpustep: fitted on the measured rows shipped for this GPU, or
carried from the nearest measured GPU) — and the error of each prediction against the measurement."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from gpu_truth_grid import Case
from gpu_truth_records import Errors, Measured, Simulated, error_of


def resolved_attention(case: Case, model_config: dict[str, Any] | None) -> str:
    from tunelab.models.attention import resolve_attention

    return resolve_attention(case.attention, case.packed, model_config).kind.value


def architecture(case: Case) -> Any:
    """The catalog's architecture of the row's model, at the row's depth (a shallow copy's own figures)."""
    from tunelab.catalog import resolve_architecture

    arch = resolve_architecture(case.arch)
    return replace(arch, layers=case.layers) if case.layers else arch


def flops_per_token(case: Case) -> float:
    """forecast/speed.py's formula (the planner's one) for the row's architecture and sequence length."""
    from tunelab.forecast.speed import flops_per_token as planner_flops

    return planner_flops(architecture(case), case.seq_len)


def weight_bytes(case: Case) -> float:
    """bf16 bytes of the row's model (what is built, then loaded)."""
    return 2.0 * architecture(case).parameters


def memory_inputs(case: Case, dtype: str, model_config: dict[str, Any] | None) -> Any:
    from tunelab.estimate.memory import MemoryInputs

    targets: str | tuple[str, ...] = case.targets if case.targets == "all-linear" else tuple(case.targets.split(","))
    frozen = {"qlora_frozen_dtype": case.qlora_frozen_dtype} if case.qlora_frozen_dtype else {}
    return MemoryInputs(dtype=dtype, lora_rank=case.lora_rank, lora_targets=targets,
                        activation_checkpointing=case.checkpointing, quantize=case.quantize,
                        attention=resolved_attention(case, model_config), **frozen)


def step_shape(case: Case) -> Any:
    from tunelab.estimate.simulator import StepShape

    padded = True if case.lengths == "padded" else (False if not case.packed and case.batch == 1 else None)
    return StepShape(case.batch, case.seq_len, packed=case.packed, padded=padded)


def config_dir(case: Case, cache: Path) -> Path:
    """A directory holding the row's config.json (the catalog's, at the row's depth: what `models random`
    writes), so a row is simulated whether or not its model was built."""
    import json

    from tunelab.catalog import resolve_architecture
    from tunelab.models.random_init import shallow_config

    path = cache / "configs" / f"{case.arch}-{case.layers or 'all'}L"
    path.mkdir(parents=True, exist_ok=True)
    config = shallow_config(resolve_architecture(case.arch).hf_config(), case.layers, "bfloat16")
    (path / "config.json").write_text(json.dumps(config, indent=1))
    return path


def simulate(case: Case, cache: Path, dtype: str, gpu: Any | None) -> Simulated:
    """The simulated step at the row's shape (full rows: the planner's worst case, also for the drift row)."""
    import json

    from tunelab.estimate.peak import fits, largest_micro_batch, predict_peak

    model = config_dir(case, cache)
    t0 = time.monotonic()
    model_config = json.loads((model / "config.json").read_text())
    inputs = memory_inputs(case, dtype, model_config)
    fig = predict_peak(model, inputs, step_shape(case))
    largest = None
    if case.max_batch and gpu is not None:
        largest = largest_micro_batch(model, inputs, gpu.memory_gib, case.seq_len, case.packed, None, limit=1024)
    speed = predicted_speed(case, gpu, inputs.attention) if gpu is not None else None
    return Simulated(
        allocated_gib=_r(fig.allocated_gib), reserved_gib=_r(fig.reserved_gib), context_gib=_r(fig.context_gib),
        required_gib=_r(fig.required_gib), source=fig.source, dtype=dtype,
        fits=fits(fig, gpu.memory_gib) if gpu is not None and fig.reserved_gib is not None else None,
        max_micro_batch=largest, tokens_per_s=round(speed.tokens_per_s, 1) if speed else None,
        speed_source=speed.source if speed else "", speed_fitted_on_row=in_fit(case, gpu) if speed else None,
        seconds=round(time.monotonic() - t0, 2))


def work(case: Case, attention: str) -> Any:
    """The row's depth, adapters and attention group, as the planner's step model reads a run's."""
    from tunelab.forecast.gpustep import GpuWork, adapted_per_layer, attention_group

    targets = case.targets if case.targets == "all-linear" else case.targets.split(",")
    arch = architecture(case)
    return GpuWork(arch.layers, adapted_per_layer(arch, targets), attention_group(attention, case.packed))


def predicted_speed(case: Case, gpu: Any, attention: str) -> Any:
    """The planner's first-contact speed of the row's full micro-batch (estimate.gpustep), or None (no peak)."""
    from tunelab.forecast.gpustep import gpu_step_speed

    return gpu_step_speed(architecture(case), gpu, case.batch * case.seq_len, case.seq_len, work(case, attention),
                          1, case.checkpointing)


def in_fit(case: Case, gpu: Any) -> bool:
    """Whether the step model was fitted on this very row (a shipped row of this GPU and name): its error is then
    the fit's residual, not a prediction's."""
    from tunelab.forecast.gpustep import committed_rows

    return any(f.gpu == gpu.name and any(r.name == case.name for r in f.rows) for f in committed_rows())


def _r(value: float | None) -> float | None:
    return round(value, 4) if value is not None else None


def errors(m: Measured, s: Simulated) -> Errors:
    ran = m.status == "ok"
    return Errors(
        allocated=error_of(s.allocated_gib, m.allocated_gib), reserved=error_of(s.reserved_gib, m.reserved_gib),
        context=error_of(s.context_gib, m.context_gib), context_after=error_of(s.context_gib, m.context_after_gib),
        nvml_used=error_of(s.required_gib, m.nvml_used_gib), tokens_per_s=error_of(s.tokens_per_s, m.tokens_per_s),
        max_micro_batch=error_of(s.max_micro_batch, m.max_micro_batch),
        verdict_agrees=None if s.fits is None or m.status not in ("ok", "oom") else s.fits == ran)
