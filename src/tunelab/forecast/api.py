"""`tunelab estimate`: memory, batch size, packing and time for one configuration (a ConfigEstimate)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.catalog import GPU, resolve_architecture
from tunelab.data.formatting import ChatMode, PromptFormat
from tunelab.errors import TunelabError
from tunelab.estimate.batch import BatchPlan, optimizer_steps, plan_batch, should_pack
from tunelab.estimate.config_estimate import ConfigEstimate
from tunelab.estimate.dataset import DatasetMeasurement, measure_dataset, simulate_padding
from tunelab.estimate.image_tokens import image_plan
from tunelab.estimate.memory import MemoryInputs
from tunelab.estimate.peak import MemoryFigure, fits, model_config_of, predict_peak, step_shape
from tunelab.forecast.gpus import NodeSize, fewest_gpus, gpus_needed, scaled_time
from tunelab.forecast.runs import choose_strategy
from tunelab.forecast.speed import DEFAULT_MFU, model_tokens_per_s
from tunelab.models.attention import resolve_attention
from tunelab.rundir.estimate import GpusNeeded
from tunelab.spec import DEFAULT_TEMPLATE_DATE, DatasetSpec
from tunelab.spec.resources import Strategy

if TYPE_CHECKING:
    from tunelab.estimate.simulator import StepShape


def _measure(model: str | Path, dataset: str | Path, prompt: str | None, max_seq_len: int, batch_size: int | None,
             chat_template: str, system_prompt: str | None) -> DatasetMeasurement:
    """The dataset measured with the model's tokenizer in the prompt format runs use."""
    if not Path(model).is_dir():
        raise TunelabError("--dataset needs a local model directory (its tokenizer measures the data)", field="--model")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    spec = DatasetSpec(name="dataset", path=str(Path(dataset).resolve()))
    modes: dict[str, ChatMode] = {"auto": "auto", "always": "always", "never": "never"}
    if chat_template not in modes:
        raise TunelabError(f"unknown chat template mode {chat_template!r}: use auto, always or never",
                           field="--chat-template")
    fmt = PromptFormat(chat_template=modes[chat_template], template_date=DEFAULT_TEMPLATE_DATE)
    return measure_dataset(spec, tok, fmt, prompt, max_seq_len, batch_size or 1, system_prompt=system_prompt)


def estimate_config(model: str | Path, gpu: GPU, max_seq_len: int, inputs: MemoryInputs,
                    batch_size: int | None = None, packed: bool | None = None,
                    dataset: str | Path | None = None, prompt: str | None = None, epochs: int = 1,
                    target_effective_batch: int = 16, chat_template: str = "auto",
                    system_prompt: str | None = None, processes: int = 1, strategy: Strategy | None = None,
                    images_per_example: int = 0, min_pixels: int | None = None,
                    max_pixels: int | None = None, node: NodeSize | None = None) -> ConfigEstimate:
    """inputs: every memory-relevant field of the run. chat_template/system_prompt: the data measured in the runs'
    prompt format. processes/strategy: memory per device of an N-GPU run (None: auto, as the plan chooses).
    images_per_example: image rows at the pixel budget (not packed). node: GPUs a node has (default: assumed)."""
    arch = resolve_architecture(model)
    images = None
    if images_per_example:
        if packed:
            raise TunelabError("image rows are not packed (the simulator and the job refuse it)", field="--packed")
        images = image_plan(model, model_config_of(model), images_per_example, min_pixels, max_pixels, max_seq_len)
        inputs, packed = images.apply(inputs), False
    out: dict[str, Any] = {"model": arch.name, "parameters": arch.parameters, "gpu": gpu.name,
                           "gpu_memory_mib": gpu.memory_mib,
                           "gpu_memory_gib": round(gpu.memory_gib, 3), "max_seq_len": max_seq_len,
                           "lora_rank": inputs.lora_rank, "lora_targets": inputs.lora_targets, "dtype": inputs.dtype,
                           "gradient_checkpointing": inputs.activation_checkpointing, "quantize": inputs.quantize,
                           "processes": processes, "strategy": strategy}
    data = (_measure(model, dataset, prompt, max_seq_len, batch_size, chat_template, system_prompt)
            if dataset is not None else None)
    train = data.train if data else None
    use_packed = packed if packed is not None else should_pack(train.mean_len if train else None, max_seq_len)
    attention = resolve_attention(inputs.attention, use_packed, model_config_of(model))
    inputs = replace(inputs, attention=attention.kind.value)
    out.update({"attention": attention.kind.value, "attention_kernel": attention.describe()})
    if processes > 1 and strategy is None:  # auto, as the plan decides it (at micro-batch 1)
        one = step_shape(1, max_seq_len, use_packed, train.max_len if train else None)
        strategy = out["strategy"] = _auto_strategy(model, inputs, one, processes, gpu, arch)
    bp = plan_batch(model, inputs, gpu.memory_gib, max_seq_len, target_effective_batch, packed=use_packed,
                    longest=train.max_len if train else None,
                    density=data.packing.density if data else None,
                    sequences=(data.packing.sequences if use_packed else data.train.examples) if data else None,
                    epoch_seconds=(lambda b, _accum: _epoch_work(data, arch, gpu, use_packed, b, max_seq_len).seconds)
                    if data else None, processes=processes, strategy=strategy)
    if packed is None and train:
        bp.reasons.insert(0, f"packing {'on' if use_packed else 'off'}: mean example {train.mean_len:.0f} "
                             f"tokens vs max_seq_len {max_seq_len}")
    b = batch_size or bp.recommended_batch_size or 1
    shape = step_shape(b, max_seq_len, use_packed, train.max_len if train else None)
    mem = predict_peak(model, inputs, shape, processes, strategy, arch)
    out.update(_memory_fields(mem, gpu, bp, b, shape, use_packed))
    if images:
        out.update(_image_estimate(images, arch, gpu, b, max_seq_len))
    if data:
        accum = bp.recommended_gradient_accumulation_steps if batch_size is None else 1
        out.update(_epoch_estimate(data, arch, gpu, use_packed, b, accum, max_seq_len, epochs))
    if not fits(mem, gpu.memory_gib):  # set only where it does not fit (the JSON holds the fields set)
        out.update(_gpus_needed(model, inputs, shape, gpu, arch, b, node or NodeSize.assumed(), out))
    return ConfigEstimate(**out)


def _auto_strategy(model: str | Path, inputs: MemoryInputs, shape: StepShape, processes: int, gpu: GPU,
                   arch: Any) -> Strategy | None:
    """distributed: auto on `processes` GPUs — DDP unless only the FSDP-sharded step fits (the plan's rule)."""
    whole = predict_peak(model, inputs, shape, processes, Strategy.DDP, arch)
    sharded = predict_peak(model, inputs, shape, processes, Strategy.FSDP, arch)
    return choose_strategy("auto", processes, whole.required_gib, sharded.required_gib, gpu.memory_gib)


def _gpus_needed(model: str | Path, inputs: MemoryInputs, shape: StepShape, gpu: GPU, arch: Any, b: int,
                 node: NodeSize, out: dict[str, Any]) -> dict[str, GpusNeeded]:
    """{"gpus_needed": …}: the fewest GPUs on which micro-batch b's FSDP-sharded peak fits, their nodes and (with a
    dataset) the epochs' time on them; empty when no count fits."""
    search = fewest_gpus(model, inputs, shape, gpu.memory_gib, arch)
    if search is None:
        return {}
    need = gpus_needed(search, b, gpu.memory_gib, node)
    per_epoch, epochs = out.get("est_seconds_per_epoch"), out.get("epochs") or 1
    if per_epoch is None:
        return {"gpus_needed": need.model_copy(update={"time_source": "none: the time needs a dataset "
                                                                      "(--dataset) and a GPU with a FLOPs figure"})}
    time = scaled_time(per_epoch * epochs, need.gpus_per_run,
                       f"{epochs} epoch(s), FLOPs model at {DEFAULT_MFU:.0%} MFU")
    return {"gpus_needed": need.model_copy(update={"seconds": time.seconds, "time_source": time.source,
                                                   "gpu_hours": time.gpu_hours})}


def _memory_fields(mem: MemoryFigure, gpu: GPU, bp: BatchPlan, b: int, shape: StepShape,
                   use_packed: bool) -> dict[str, Any]:
    """The micro-batch's memory: the figure, its parts, whether it fits, and the micro-batch search's answer."""
    return {
        "packed": use_packed,
        "batch_size": b,
        "tokens_per_microbatch": shape.tokens,
        "peak_memory_gib": round(mem.required_gib, 3),
        "peak_allocated_gib": round(mem.allocated_gib, 3) if mem.allocated_gib is not None else None,
        "peak_reserved_gib": round(mem.reserved_gib, 3) if mem.reserved_gib is not None else None,
        "cuda_context_gib": round(mem.context_gib, 3),
        "peak_allocated_bytes": mem.simulated.peak_allocated if mem.simulated else None,
        "memory_breakdown_gib": mem.breakdown(),
        "analytic_peak_gib": round(mem.analytic.peak_gib, 3),
        "memory_source": mem.source,
        "simulation_s": mem.simulated.seconds if mem.simulated else None,
        "fits": fits(mem, gpu.memory_gib),
        "max_batch_size": bp.max_batch_size,
        "recommended_batch_size": bp.recommended_batch_size,
        "recommended_gradient_accumulation_steps": bp.recommended_gradient_accumulation_steps,
        "reasons": bp.reasons,
    }


def _image_estimate(images: Any, arch: Any, gpu: GPU, b: int, max_seq_len: int) -> dict[str, Any]:
    """The image facts and a micro-batch's time: the FLOPs model over its LM tokens (the frozen tower not counted)."""
    tps = model_tokens_per_s(arch, gpu, max_seq_len)
    return {"images": images.to_json(),
            "est_tokens_per_s": round(tps, 1) if tps else None,
            "est_seconds_per_micro_batch": round(b * max_seq_len / tps, 3) if tps else None,
            "est_source": "model",
            "est_note": f"FLOPs model at {DEFAULT_MFU:.0%} MFU over the language model's tokens (image tokens "
                        "included, the vision tower's forward not counted); measured history replaces it"}


@dataclass(frozen=True)
class _EpochWork:
    sequences: int  # rows of an epoch: packed sequences when packed
    tokens: int  # tokens processed: padding-free when packed, padded to each micro-batch's longest otherwise
    tokens_per_s: float | None  # FLOPs model

    @property
    def seconds(self) -> float | None:
        return self.tokens / self.tokens_per_s if self.tokens_per_s else None


def _epoch_work(data: DatasetMeasurement, arch: Any, gpu: GPU, packed: bool, b: int, max_seq_len: int) -> _EpochWork:
    """Rows, tokens and (FLOPs-model) speed of an epoch of the measured data at micro-batch b."""
    train = data.train
    if packed:
        sequences, tokens = data.packing.sequences, train.tokens
    else:
        sequences = train.examples
        tokens = simulate_padding(data.train_lengths, b, max_seq_len).padded_tokens
    tokens_per_s = model_tokens_per_s(arch, gpu, max_seq_len if packed else int(train.mean_len))
    return _EpochWork(sequences, tokens, tokens_per_s)


def _epoch_estimate(data: DatasetMeasurement, arch: Any, gpu: GPU, packed: bool, b: int, accum: int, max_seq_len: int,
                    epochs: int) -> dict[str, Any]:
    """Tokens, steps and (FLOPs-model) time of an epoch of the measured data at micro-batch b."""
    work = _epoch_work(data, arch, gpu, packed, b, max_seq_len)
    tps = work.tokens_per_s
    return {
        "dataset": data.to_json(),
        "packing_density": data.packing.density,
        "packing_efficiency": data.packing.fill_fraction,
        "tokens_per_epoch": work.tokens,
        "steps_per_epoch": optimizer_steps(work.sequences, b, accum, 1),
        "epochs": epochs,
        "est_tokens_per_s": round(tps, 1) if tps else None,
        "est_seconds_per_epoch": round(work.seconds, 1) if work.seconds is not None else None,
        "est_source": "model",
        "est_note": f"FLOPs model at {DEFAULT_MFU:.0%} MFU; measured history replaces it when present",
    }
