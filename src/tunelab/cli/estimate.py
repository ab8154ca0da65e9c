"""`tunelab estimate` and `tunelab validate`: the planner's numbers for one configuration, and the checks a
spec or run.yaml must pass, each against a named or detected GPU."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from tunelab.cli.common import add_commands, emit, gpu_or_none, json_option
from tunelab.console import error, say, warn
from tunelab.errors import TunelabError
from tunelab.spec.resources import Strategy

if TYPE_CHECKING:
    from tunelab.catalog import GPU
    from tunelab.estimate.config_estimate import ConfigEstimate
    from tunelab.estimate.memory import MemoryInputs
    from tunelab.spec import TrainingConfig


def _gpu_option(name: str | None):
    from tunelab.catalog import detect_gpu, resolve_gpu

    if name:
        return resolve_gpu(name)
    gpu = detect_gpu()
    if gpu is None:
        raise TunelabError("no GPU here to detect: name the target with --gpu (e.g. H100-80GB)", field="--gpu")
    return gpu


def _estimate_gpu(name: str | None, memory_gib: float | None):
    """--gpu from the table; with --gpu-memory-gib, any GPU (named or not) of that much memory."""
    from tunelab.catalog import GPU, resolve_gpu

    if memory_gib is not None:
        if memory_gib <= 0:
            raise TunelabError(f"--gpu-memory-gib must be positive, got {memory_gib:g}", field="--gpu-memory-gib")
        try:
            known = resolve_gpu(name) if name else None
        except TunelabError:
            known = None
        return GPU(name or f"GPU ({memory_gib:g} GiB)", memory_gib * 1024, known.bf16_tflops if known else 0.0,
                   known.bandwidth_gbs if known else 0.0, known.compute_capability if known else (8, 0))
    try:
        return _gpu_option(name)
    except TunelabError as exc:
        raise TunelabError(f"{exc.message}; for a GPU the table lacks give its memory with --gpu-memory-gib",
                           field="--gpu") from None


# estimate's options that are fields of the spec's `training:` (their defaults are the spec's)
TRAINING_FLAGS = {"dtype": "--dtype", "lora_rank": "--lora-rank", "lora_alpha": "--lora-alpha",
                  "lora_target_modules": "--lora-targets", "modules_to_save": "--modules-to-save",
                  "gradient_checkpointing": "--gradient-checkpointing", "quantize": "--quantize", "epochs": "--epochs"}


def _training(given: dict[str, Any]) -> TrainingConfig:
    """The spec's training config of the options given (the rest at the spec's defaults), checked as the spec
    checks it; an error names the option."""
    from pydantic import ValidationError

    from tunelab.spec import TrainingConfig

    targets = given.get("lora_target_modules")
    if targets and targets != ["all-linear"] and "all-linear" in targets:
        raise TunelabError("all-linear stands alone: give it or module names", field="--lora-targets")
    if targets == ["all-linear"]:
        given["lora_target_modules"] = "all-linear"
    try:
        return TrainingConfig.model_validate({k: v for k, v in given.items() if v not in (None, [])})
    except ValidationError as exc:
        err = exc.errors()[0]
        name = str(err["loc"][0]) if err["loc"] else ""
        flag = TRAINING_FLAGS.get(name, f"--{name.replace('_', '-')}")
        raise TunelabError(f"{err['msg']} (got {err.get('input')!r})", field=flag) from None


def _estimate_inputs(training: TrainingConfig, gpu: GPU, attention: str) -> MemoryInputs:
    """What the simulator needs, exactly as `plan` derives it from a run: the dtype `auto` trains in on that GPU."""
    from tunelab.estimate.memory import MemoryInputs
    from tunelab.models.attention import AttentionKind

    if attention not in set(AttentionKind):
        raise TunelabError(f"unknown attention {attention!r}: use {', '.join(AttentionKind)}", field="--attention")
    inputs = MemoryInputs.of_training(training, training.planned_dtype(gpu.compute_capability))
    return dataclasses.replace(inputs, attention=attention)  # auto: resolved once packing is decided


# `tunelab estimate`'s options, one per line in its signature below
_MODEL = typer.Option(..., "--model", help="Local HF model dir or a known name (e.g. Llama-3.2-1B).")
_GPU = typer.Option(None, "--gpu", help="Target GPU (e.g. H100-80GB); detected when present.")
_GPU_MEMORY_GIB = typer.Option(None, "--gpu-memory-gib", help="The GPU's memory in GiB, for a GPU the table lacks "
                               "(or to override it).")
_MAX_SEQ_LEN = typer.Option(..., "--max-seq-len", help="Maximum tokens per sequence.")
_BATCH_SIZE = typer.Option(None, "--batch-size", help="Micro-batch to predict memory for.")
_PACKED = typer.Option(None, "--packed/--no-packed", help="Default: recommend from the data.")
_LORA_RANK = typer.Option(None, "--lora-rank", help="LoRA rank (adapter size and optimizer state; default: the "
                          "spec's, 8).")
_LORA_ALPHA = typer.Option(None, "--lora-alpha", help="LoRA alpha (default 2 × rank).")
_LORA_TARGETS = typer.Option(None, "--lora-targets", help="Modules LoRA adapts (repeatable, e.g. q_proj), or "
                             "all-linear (default).")
_GRADIENT_CHECKPOINTING = typer.Option(False, "--gradient-checkpointing", "--activation-checkpointing",
                                       help="Recompute activations in the backward pass: less memory, more time.")
_QUANTIZE = typer.Option(None, "--quantize", help="4bit: QLoRA (NF4 base, bitsandbytes).")
_ATTENTION = typer.Option("auto", "--attention", help="As training.attention: auto (varlen when packed, else sdpa), "
                          "varlen, sdpa (dense mask when packed), eager, flash_attention_2, flex_attention.")
_GPUS = typer.Option(1, "--gpus", min=1, help="GPUs one run trains on (memory is per GPU).")
_STRATEGY = typer.Option(Strategy.DDP, "--strategy", help="With --gpus > 1: ddp (a replica per GPU) or fsdp "
                         "(sharded).")
_NODE_GPUS = typer.Option(None, "--node-gpus", min=1, help="GPUs one node has, for the nodes a model too large "
                          "for --gpus needs (default: node_gpus of the user config, else 8, assumed).")
_DATASET = typer.Option(None, "--dataset", help="Dataset JSON to measure with the real tokenizer.")
_PROMPT = typer.Option(None, "--prompt", help="Prompt template naming the rows' fields, e.g. 'Q: {input}' (with "
                       "--dataset; chat and prompt/completion rows need none).")
_EPOCHS = typer.Option(None, "--epochs", help="Training epochs, for steps and time (default: the spec's, 3).")
_EFFECTIVE_BATCH = typer.Option(16, "--effective-batch", help="Target examples per optimizer step.")
_DTYPE = typer.Option(None, "--dtype", help="Weights and activations: auto (the spec's default: bfloat16 on a GPU "
                      "with bf16 tensor cores, else float32), bfloat16, float16 or float32.")
_MODULES_TO_SAVE = typer.Option(None, "--modules-to-save", help="Modules trained in full beside LoRA, as in the "
                                "spec (repeatable), e.g. lm_head.")
_CHAT_TEMPLATE = typer.Option("auto", "--chat-template", help="auto, always or never: the prompt format measured "
                              "(with --dataset), as the spec's chat_template.")
_SYSTEM_PROMPT = typer.Option(None, "--system-prompt", help="System message for rows without one (with "
                              "--dataset), as the spec's system_prompt.")
_IMAGES_PER_EXAMPLE = typer.Option(0, "--images-per-example", min=0, help="Vision-language models: images in "
                                   "every example (their tokens count in --max-seq-len).")
_MIN_PIXELS = typer.Option(None, "--min-pixels", min=1, help="With images: each image resized to at least this "
                           "many pixels (default: the model's processor's).")
_MAX_PIXELS = typer.Option(None, "--max-pixels", min=1, help="With images: each image resized to at most this "
                           "many pixels, the budget memory is planned for.")
_JSON_OUT = typer.Option(False, "--json", help="Machine-readable output.")


def estimate_cmd(
    model: str = _MODEL,
    gpu: str | None = _GPU,
    gpu_memory_gib: float | None = _GPU_MEMORY_GIB,
    max_seq_len: int = _MAX_SEQ_LEN,
    batch_size: int | None = _BATCH_SIZE,
    packed: bool | None = _PACKED,
    lora_rank: int | None = _LORA_RANK,
    lora_alpha: float | None = _LORA_ALPHA,
    lora_targets: list[str] | None = _LORA_TARGETS,
    gradient_checkpointing: bool = _GRADIENT_CHECKPOINTING,
    quantize: str | None = _QUANTIZE,
    attention: str = _ATTENTION,
    gpus: int = _GPUS,
    strategy: Strategy = _STRATEGY,
    node_gpus: int | None = _NODE_GPUS,
    dataset: Path | None = _DATASET,
    prompt: str | None = _PROMPT,
    epochs: int | None = _EPOCHS,
    effective_batch: int = _EFFECTIVE_BATCH,
    dtype: str | None = _DTYPE,
    modules_to_save: list[str] | None = _MODULES_TO_SAVE,
    chat_template: str = _CHAT_TEMPLATE,
    system_prompt: str | None = _SYSTEM_PROMPT,
    images_per_example: int = _IMAGES_PER_EXAMPLE,
    min_pixels: int | None = _MIN_PIXELS,
    max_pixels: int | None = _MAX_PIXELS,
    json_out: bool = _JSON_OUT,
) -> None:
    """Predict peak GPU memory and the micro-batch that fits for one configuration.

    Predict peak memory per GPU by simulating tunelab's training step (no GPU needed), the largest
    micro-batch that fits, packing and accumulation (memory in tokens per micro-batch)."""
    from tunelab.forecast.api import estimate_config

    training = _training({"dtype": dtype, "lora_rank": lora_rank, "lora_alpha": lora_alpha,
                          "lora_target_modules": lora_targets, "modules_to_save": modules_to_save,
                          "gradient_checkpointing": gradient_checkpointing or None, "quantize": quantize,
                          "epochs": epochs})
    target_gpu = _estimate_gpu(gpu, gpu_memory_gib)
    inputs = _estimate_inputs(training, target_gpu, attention)
    if chat_template not in ("auto", "always", "never"):
        raise TunelabError(f"unknown chat template mode {chat_template!r}: use auto, always or never",
                           field="--chat-template")
    est = estimate_config(model, target_gpu, max_seq_len, inputs, batch_size, packed,
                          dataset, prompt, training.epochs, effective_batch, chat_template=chat_template,
                          system_prompt=system_prompt, processes=gpus, strategy=strategy if gpus > 1 else None,
                          images_per_example=images_per_example, min_pixels=min_pixels, max_pixels=max_pixels,
                          node=_node_size(node_gpus))
    if json_out:
        print(json.dumps(est.to_json(), indent=2))
        return
    _print_estimate(est)


def _node_size(flag: int | None):
    """GPUs a node has: --node-gpus, else the user config's node_gpus, else the assumption (and its source)."""
    from tunelab.forecast.gpus import NodeSize
    from tunelab.userconfig import load_user_config, user_config_path

    if flag is not None:
        return NodeSize(flag, "--node-gpus")
    user = load_user_config().node_gpus
    return NodeSize(user, f"node_gpus in {user_config_path()}") if user else NodeSize.assumed()


def _print_estimate(est: ConfigEstimate) -> None:
    say("{} on {} ({:.1f} GiB), max_seq_len {}{}", est.model, est.gpu, est.gpu_memory_gib, est.max_seq_len,
        f", {est.processes} GPUs ({est.strategy})" if est.processes > 1 else "")
    simulated = est.peak_allocated_gib is not None and est.peak_reserved_gib is not None
    detail = (f" (allocated {est.peak_allocated_gib:.1f}, reserved {est.peak_reserved_gib:.1f}, CUDA context "
              f"{est.cuda_context_gib:.1f})" if simulated else "")
    say("batch {}{}: {:,} tokens/micro-batch → peak {:.1f} GiB{} ("
        + ("fits" if est.fits else "[red]does not fit[/red]") + ") \\[source: {}]", est.batch_size,
        " packed" if est.packed else "", est.tokens_per_microbatch, est.peak_memory_gib, detail, est.memory_source)
    say("  attention: {}", est.attention_kernel)
    if est.images:
        im = est.images
        say("  images: {} per example, each up to {}x{} px → grid {} → {} tokens ({} per example, in max_seq_len)",
            im["images_per_example"], *im["image_size"], "x".join(map(str, im["image_grid_thw"])),
            im["tokens_per_image"], im["image_tokens_per_example"])
        if est.est_seconds_per_micro_batch is not None:
            say("  time: {:.2f} s per micro-batch ({})", est.est_seconds_per_micro_batch, est.est_note)
    say("  where it goes (GiB): {}", ", ".join(f"{k.removesuffix('_gib')} {v:.2f}"
                                              for k, v in est.memory_breakdown_gib.items()))
    say("max batch that fits: {}; recommended: {} × accumulation {}", est.max_batch_size,
        est.recommended_batch_size, est.recommended_gradient_accumulation_steps)
    for r in est.reasons:
        say("  - {}", r)
    if not est.fits:
        from tunelab.forecast.gpus import MAX_GPUS, describe

        say("GPUs needed: {}", describe(est.gpus_needed) if est.gpus_needed is not None else
            f"the FSDP-sharded peak does not fit even {MAX_GPUS} GPUs: the activations alone nearly fill one")


def validate_cmd(
    path: Path = typer.Argument(..., help="experiment.yaml, or a run's run.yaml"),
    gpu: str | None = typer.Option(None, "--gpu", help="Target GPU (e.g. A100-80GB); detected when present, "
                                      "else this machine's CPU."),
    json_out: bool = json_option("every run's checks"),
) -> None:
    """Exit 1 when a run would not fit on the GPU or its data or prompt is wrong.

    Exit 1 when a run would OOM (predicted), a split/field is missing, the prompt lacks {input}, warm-up
    exceeds training, or the sweep's predicted disk use exceeds its filesystem's free space or quota; warn
    (exit 0) near the memory limit or on a wasteful choice."""
    from tunelab.plan.validate import validate_path

    checks = validate_path(path, gpu_or_none(gpu, path))
    errors = [e for c in checks for e in c.errors]
    if json_out:
        from tunelab.mcp.models import ValidateOut

        emit(ValidateOut.of(checks))
    else:
        for c in checks:
            for e in c.errors:
                error(f"{path}: {e}")
            for w in c.warnings:
                warn(w)
        if not errors:
            say("ok: {} run(s) validated for {}", len(checks), _checked_for(checks))
    if errors:
        raise typer.Exit(1)


def _checked_for(checks: list) -> str:
    """The device the checks were made for: the GPU's name, or this machine's CPU and its RAM."""
    if not checks or checks[0].device != "cpu":
        return checks[0].device if checks else "this machine"
    ram = checks[0].device_memory_gib
    return (f"this machine's CPU ({f'{ram:.1f} GiB RAM' if ram is not None else 'RAM unknown'}; host memory is not "
            "modelled, so no memory check)")


def register(app: typer.Typer) -> None:
    """Add estimate and validate to the main app."""
    add_commands(app, {"estimate": estimate_cmd, "validate": validate_cmd})
