"""Evaluation, predicted: the time of one target × task from its samples, their left-padded prompt tokens, the tokens
generated (each batch decodes until its longest answer, at most `max_tokens`), the batch and a generation speed, whose
source is always said:

- history: finished evaluations of the same model and task calibrate the speed and give the generated lengths;
- probed: `tunelab probe` timed batched generations on this device;
- assumed: a training speed from the history (a forward is a third of a step), else a FLOPs model (prefill at
  DEFAULT_MFU, a decode step reading every weight at the GPU's bandwidth).

`load_s` is apart from `seconds` because one load serves every task of a target. `upper_s` has every batch decode to
max_tokens: what a time limit must allow for a model that never stops."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from statistics import median

from tunelab.catalog import GPU, Architecture
from tunelab.evaluate.batchcut import decode_batches
from tunelab.forecast.cpuspeed import MATMUL_EFFICIENCY, cpu_flops
from tunelab.forecast.jobstart import architecture_or_none, eval_start
from tunelab.forecast.speed import DEFAULT_MFU
from tunelab.forecast.speedhistory import device_key, on_device
from tunelab.ledger.generation import GenerationOrigin, GenerationRow, load
from tunelab.ledger.history import HistoryRun
from tunelab.rundir.probe import GenerationSpeed
from tunelab.spec.evaluation import Engine

FORWARD_SHARE = 1 / 3  # a forward pass is about a third of a training step (forecast/runs.py VALIDATION_COST)
ASSUMED_CPU_BANDWIDTH_GBS = 10.0  # a CPU's memory bandwidth, GB/s, for a decode step reading every weight
ASSUMED_LAYER_STEP_S = 3e-4  # the generation loop's own work per layer and decode step (kernel launches, Python)
# inspect-ai's own work per sample (its solver, scorer, transcript and log; tunelab's prompt encoding): measured
# on this CPU as ~15 ms a sample beyond the tiny model's generation (a one-pass sweep, tests/e2e); an assumption
# until an evaluation of the model and task is in the history, whose measured time includes it
SAMPLE_OVERHEAD_S = 0.015
# tunelab's own loop (evaluate/batched.py: the built-ins exact_match, includes, numeric, choice on the HF engine): its prompt
# formatting, outputs, scoring, log writing and read-back measured at 0.65 s over the demo's 1,200 samples on this CPU
# (benchmarks/eval_sweep.py --phases-only); 1 ms a sample, an assumption until the history measures it
BATCHED_SAMPLE_OVERHEAD_S = 0.001
# eval.engine vllm: the speed is the device's as for HF (no vLLM measurement in the history yet); the server's start
# is the start-up's (forecast/jobstart.py VLLM_SERVER_START_S)
HISTORY_ROWS = 3  # the most recent measured evaluations of a model + task that calibrate a prediction


class EvalSource(StrEnum):
    """Where an evaluation's predicted time came from (best first)."""

    HISTORY = "history"
    PROBED = "probed"
    ASSUMED = "assumed"  # a training row's speed carried over, or a FLOPs model (on a CPU: a timed matmul's rate)


# An evaluation job's limit: its worst case × the margin of the prediction's source + 5 min, rounded up to a quarter
# hour. The less of it was measured, the wider: an assumed speed can be several times off (a decode step's loop
# overhead is a guess), a probed one misses the evaluator's own work, the history has seen this very task.
EVAL_TIME_MARGINS = {EvalSource.HISTORY: 1.5, EvalSource.PROBED: 2.0, EvalSource.ASSUMED: 3.0}


@dataclass(frozen=True)
class EvalWorkload:
    """One target × task to evaluate: what its time depends on. `prompt_tokens`/`answer_tokens`: per sample, in
    evaluation order (answers: the reference's tokens; empty: unknown, every row runs to max_tokens)."""

    model: str
    samples: int
    prompt_tokens: tuple[int, ...]
    answer_tokens: tuple[int, ...]
    max_tokens: int
    batch_size: int
    task: str | None = None
    device: str = "cpu"  # 'cpu' or the GPU's name (estimate.runs.device_key)
    engine: Engine = Engine.HF  # vllm: a server's start for the load; its batch is every resident adapter's rows
    batched: bool = False  # evaluated by tunelab's own loop, not inspect-ai's per-sample one (evaluate/batched.py)

    def sample_overhead_s(self) -> float:
        """The evaluator's own work per sample, assumed: its loop's (batched or inspect-ai's)."""
        return BATCHED_SAMPLE_OVERHEAD_S if self.batched else SAMPLE_OVERHEAD_S


@dataclass(frozen=True)
class EvalTimeEstimate:
    """Predicted evaluation of one target × task: seconds on loaded weights, load apart, worst case, sources."""

    seconds: float
    source: EvalSource
    detail: str  # the source in words (what was measured, when, how it was carried over)
    load_s: float
    prefill_s: float
    generation_s: float
    overhead_s: float  # the evaluator's own work per sample (solver, scorer, log)
    upper_s: float  # every batch decoding to max_tokens
    decode_steps: int
    batches: int
    speed: GenerationSpeed = field(repr=False)

    @property
    def total_s(self) -> float:
        """Load + prefill + generation + the evaluator's work: one target × task evaluated alone."""
        return self.load_s + self.seconds


def predict_eval_time(*, model: str | Path, gpu: GPU | None, samples: int, prompt_tokens: Sequence[int] = (),
                      answer_tokens: Sequence[int] = (), max_tokens: int, batch_size: int,
                      history: Sequence[HistoryRun] = (), task: str | None = None,
                      generation: Sequence[GenerationRow] | None = None,
                      cpu_threads: int | None = None, engine: Engine = Engine.HF,
                      batched: bool = False) -> EvalTimeEstimate:
    """The predicted time of one target × task (see EvalWorkload); `generation` None reads the history; `batched`:
    tunelab's own loop evaluates it (a lighter evaluator's work per sample)."""
    if generation is None:
        generation = load()
    work = EvalWorkload(model=str(model), samples=samples, prompt_tokens=tuple(prompt_tokens),
                        answer_tokens=tuple(answer_tokens), max_tokens=max_tokens, batch_size=max(1, batch_size),
                        task=task, device=device_key(gpu), engine=engine, batched=batched)
    return predict_workload(work, gpu, generation, history, cpu_threads)


def predict_workload(work: EvalWorkload, gpu: GPU | None, generation: Sequence[GenerationRow],
                     history: Sequence[HistoryRun] = (), cpu_threads: int | None = None) -> EvalTimeEstimate:
    """The prediction: the best speed available (history > probed > assumed), priced over the batches."""
    arch = architecture_or_none(work.model)
    base, source, detail = _base_speed(work, gpu, generation, history, arch, cpu_threads)
    measured = _measured_rows(work, gpu, generation)
    overhead_s = work.sample_overhead_s()
    speed, per_sample, lengths = base, overhead_s, _reference_lengths(work)
    if measured:
        ratio = median(_calibration(r, base, overhead_s) for r in measured)
        speed, per_sample = _scaled(base, ratio), overhead_s * ratio
        mean_generated = sum((r.generated_tokens or 0) / max(1, r.samples or 1) for r in measured) / len(measured)
        lengths = [max(1, min(work.max_tokens, round(mean_generated)))] * work.samples
        source = EvalSource.HISTORY
        detail = (f"history: {len(measured)} evaluation(s) of this model on task {work.task} took ×{ratio:.2f} of "
                  f"{detail} + {overhead_s * 1e3:.0f} ms per sample; {mean_generated:.1f} tokens generated "
                  "per sample")
    else:
        detail += f"; + {overhead_s * 1e3:.0f} ms per sample for the evaluator (assumed)"
    prefill, steps, generation_s, batches = _price(work, speed, lengths)
    _, _, upper_gen, _ = _price(work, speed, [work.max_tokens] * work.samples)
    overhead = per_sample * work.samples
    start = eval_start(work.model, gpu, history, work.engine)
    load_s = start.seconds
    if start.server_s:
        detail += f"; engine vllm: {start.server_s:.0f} s server start"
    return EvalTimeEstimate(
        seconds=round(prefill + generation_s + overhead, 3), source=source, detail=detail, load_s=load_s,
        prefill_s=round(prefill, 3), generation_s=round(generation_s, 3), overhead_s=round(overhead, 3),
        upper_s=round(prefill + upper_gen + overhead, 3), decode_steps=steps, batches=batches, speed=speed)


def eval_time_limit(seconds: float, source: EvalSource) -> str:
    """A Slurm limit for an evaluation job predicted to take `seconds` at worst: × the source's margin
    (EVAL_TIME_MARGINS) + 5 min, rounded up to 15 minutes (as the training limit, forecast/runs.py)."""
    minutes = math.ceil((seconds * EVAL_TIME_MARGINS[source] + 300) / 60 / 15) * 15
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


def _reference_lengths(work: EvalWorkload) -> list[int]:
    """Tokens each sample generates: its reference + the end of turn, at most max_tokens (unknown: max_tokens)."""
    if not work.answer_tokens:
        return [work.max_tokens] * work.samples
    answers = _per_sample(work.answer_tokens, work.samples)
    return [max(1, min(work.max_tokens, a + 1)) for a in answers]


def _per_sample(values: tuple[int, ...], samples: int) -> list[int]:
    """`values` for `samples` samples: cut, or continued with their mean (0 when there are none)."""
    if len(values) >= samples:
        return list(values[:samples])
    fill = round(sum(values) / len(values)) if values else 0
    return list(values) + [fill] * (samples - len(values))


def _price(work: EvalWorkload, speed: GenerationSpeed, lengths: list[int]) -> tuple[float, int, float, int]:
    """(prefill s, decode steps, generation s, batches) over the samples in the batches the evaluator runs
    (evaluate/batchcut.decode_batches): each prefill group pads its rows to its longest prompt, and each decode batch
    decodes until its longest answer."""
    prompts = _per_sample(work.prompt_tokens, work.samples)
    device = work.device if work.engine == Engine.HF else None  # a server batches its own way: by rows only
    prefill = generation = 0.0
    steps = batches = 0
    for batch in decode_batches(prompts, max(1, work.batch_size), device) if work.samples else []:
        rows = [i for group in batch for i in group]
        prefill += sum(len(group) * max(prompts[i] for i in group) for group in batch) / speed.prefill_tokens_per_s
        batch_steps = max(lengths[i] for i in rows)
        generation += batch_steps * (speed.decode_fixed_s + speed.decode_row_s * len(rows))
        steps += batch_steps
        batches += 1
    return prefill, steps, generation, batches


def _measured_rows(work: EvalWorkload, gpu: GPU | None, generation: Sequence[GenerationRow]) -> list[GenerationRow]:
    """The most recent finished evaluations of this model and task with a throughput, on this device."""
    if work.task is None:
        return []
    rows = [r for r in generation if r.origin == GenerationOrigin.MEASURED and r.task == work.task
            and _same_model(r.model_path, work.model) and (r.device is None or on_device(r.device, r.cpu_model, gpu))
            and r.generated_tokens is not None and r.samples and r.wall_s]
    return rows[-HISTORY_ROWS:]


def _same_model(a: str, b: str) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve() if a and b else False


def _calibration(row: GenerationRow, speed: GenerationSpeed, overhead_s: float) -> float:
    """Measured wall time ÷ what `speed` (and `overhead_s` per sample) predicts for the row's own mean workload."""
    samples = row.samples or 1
    past = EvalWorkload(model=row.model_path, samples=samples, prompt_tokens=(round((row.prompt_tokens or 0)
                        / samples),), answer_tokens=(), max_tokens=max(1, round((row.generated_tokens or 0) / samples)),
                        batch_size=row.batch_size or 1)
    prefill, _, generation, _ = _price(past, speed, [past.max_tokens] * samples)
    return (row.wall_share_s() or 0.0) / max(prefill + generation + overhead_s * samples, 1e-9)


def _scaled(speed: GenerationSpeed, ratio: float) -> GenerationSpeed:
    """The same speed, every part taking `ratio` times as long."""
    return GenerationSpeed(prefill_tokens_per_s=speed.prefill_tokens_per_s / max(ratio, 1e-9),
                           decode_fixed_s=speed.decode_fixed_s * ratio, decode_row_s=speed.decode_row_s * ratio)


def _base_speed(work: EvalWorkload, gpu: GPU | None, generation: Sequence[GenerationRow],
                history: Sequence[HistoryRun], arch: Architecture | None,
                cpu_threads: int | None) -> tuple[GenerationSpeed, EvalSource, str]:
    """The probe's speed of this model on this device, else an assumed one."""
    probed = [r for r in generation if r.origin == GenerationOrigin.PROBED and _same_model(r.model_path, work.model)
              and on_device(r.device, r.cpu_model, gpu) and (cpu_threads is None or r.cpu_threads in (None, cpu_threads))]
    speed = probed[-1].speed() if probed else None
    if speed is not None:
        return speed, EvalSource.PROBED, (
            f"probed on {work.device} ({probed[-1].recorded_at}): prefill {speed.prefill_tokens_per_s:,.0f} tokens/s, "
            f"decode step {speed.decode_fixed_s * 1e3:.2f} ms + {speed.decode_row_s * 1e3:.2f} ms per row")
    speed, detail = _assumed_speed(work, gpu, history, arch, cpu_threads)
    return speed, EvalSource.ASSUMED, detail  # a timed matmul × assumed constants is no timing of an evaluation


def _assumed_speed(work: EvalWorkload, gpu: GPU | None, history: Sequence[HistoryRun],
                   arch: Architecture | None, cpu_threads: int | None = None) -> tuple[GenerationSpeed, str]:
    """From a measured training step of this model on this device (a forward = a third of a step), else FLOPs."""
    trained = [r for r in history if r.per_token_s and on_device(r.device, r.cpu_model, gpu) and r.of_architecture(arch)]
    if trained:
        row = trained[-1]
        per_token = (row.per_token_s or 0.0) * FORWARD_SHARE
        fixed = (row.step_fixed_s or 0.0) * FORWARD_SHARE
        return (GenerationSpeed(prefill_tokens_per_s=1 / max(per_token, 1e-12), decode_fixed_s=fixed,
                                decode_row_s=per_token),
                f"assumed from training ({row.kind} run {row.run}): a forward = {FORWARD_SHARE:.2f} of its step")
    params = arch.parameters if arch is not None else 1e9
    if gpu is not None:
        flops, where = gpu.bf16_tflops * 1e12 * DEFAULT_MFU, f"{gpu.name} at {DEFAULT_MFU:.0%} MFU (assumed)"
    else:  # this CPU's speed timed here (forecast/cpuspeed.py), the same measurement training's plan takes
        flops = cpu_flops(arch.hidden if arch is not None else 1024, cpu_threads) * MATMUL_EFFICIENCY
        where = f"this CPU (timed here: {flops / 1e9:,.1f} GFLOP/s at {MATMUL_EFFICIENCY:.0%} of a matmul's, assumed)"
    weight_bytes = params * (2 if gpu is not None else 4)
    bandwidth = (gpu.bandwidth_gbs if gpu is not None else ASSUMED_CPU_BANDWIDTH_GBS) * 1e9
    per_token = 2 * params / flops
    layers = arch.layers if arch is not None else 32
    size = (f"{params / 1e6:,.1f}M parameters" if arch is not None else
            "1,000M parameters and 32 layers (assumed: the model's config is unreadable)")
    memory = f"{gpu.bandwidth_gbs:,.0f} GB/s" if gpu is not None else f"{ASSUMED_CPU_BANDWIDTH_GBS:g} GB/s (assumed)"
    return (GenerationSpeed(prefill_tokens_per_s=1 / per_token,
                            decode_fixed_s=weight_bytes / bandwidth + layers * ASSUMED_LAYER_STEP_S,
                            decode_row_s=per_token),
            f"assumed: FLOPs of {size} on {where}, a decode step reading every "
            f"weight at {memory} + {ASSUMED_LAYER_STEP_S * 1e3:.1f} ms per layer (assumed)")
