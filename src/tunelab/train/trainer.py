"""The trainer a run trains with, built exactly as the job builds it (TRL SFTTrainer + PEFT LoRA, PromptFormat's tokens,
packing, order, DDP/FSDP). Tests and the probe build it too, so they time what a job really feeds."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunelab.host.device import resolve_dtype
from tunelab.models.lora import lora_config
from tunelab.models.vlm import is_vision_language, lora_targets
from tunelab.rundir.checkpoints import Counters
from tunelab.rundir.config import RunConfig
from tunelab.spec import Strategy, TrainingConfig
from tunelab.train import quantize
from tunelab.train.context import StageContext
from tunelab.train.dataloading import dataloader_args, resolve_workers
from tunelab.train.distributed import log, trainer_args, world
from tunelab.train.loop_hooks import make_trainer_class
from tunelab.train.metrics import LocalCounts
from tunelab.train.ordering import order_for
from tunelab.train.vision import vision_parts


def build_trainer(cfg: RunConfig, counters: Counters | None = None, callbacks: Sequence[Any] = (),
                  local: LocalCounts | None = None, ctx: StageContext | None = None) -> tuple[Any, Any, Any]:
    """(trainer, train dataset, validation dataset) exactly as `tunelab train` builds them."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from transformers.trainer_callback import PrinterCallback

    t = cfg.training
    assert t is not None, "a control trains nothing"
    set_seed(t.seed)
    dtype = resolve_dtype(t.dtype, "cuda" if torch.cuda.is_available() else "cpu")
    vision = vision_parts(cfg) if is_vision_language(cfg.model.path) else None  # a VLM: train/vision.py
    tokenizer = vision.tokenizer if vision else AutoTokenizer.from_pretrained(cfg.model.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    load = vision.load_model if vision else AutoModelForCausalLM.from_pretrained
    model: Any = load(cfg.model.path, dtype=dtype, attn_implementation=attention_of(cfg),
                      **quantize.load_kwargs(t.quantize, dtype))
    model = quantize.prepare(model, t.quantize, t.gradient_checkpointing, t.qlora_frozen_dtype)  # QLoRA: peft's k-bit preparation
    if not torch.cuda.is_available():
        linear_kernel(model)
    train_ds, val_ds = vision.datasets(cfg) if vision else build_datasets(cfg, tokenizer)
    targets = lora_targets(t.lora_target_modules) if vision else t.lora_target_modules
    lora: Any = lora_config(t.lora_rank, t.effective_lora_alpha, t.lora_dropout, targets, t.modules_to_save)
    ctx = ctx or StageContext()
    if ctx.init_adapter is not None:  # a later stage: continue the previous stage's adapter (same shape)
        from peft import PeftModel

        model, lora = PeftModel.from_pretrained(model, str(ctx.init_adapter), is_trainable=True), None
    args = _sft_config(t, ctx.state_dir(cfg.run_dir), dtype, val_ds is not None,
                       cfg.resources.strategy(world().size))
    trainer = make_trainer_class()(
        model=model,
        args=vision.configure(args) if vision else args,
        data_collator=vision.collator() if vision else None,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=list(callbacks),
    )
    trainer.counters = counters if counters is not None else Counters()
    trainer.local = local if local is not None else LocalCounts()
    trainer.fixed_order, trainer.order_spec = order_for(t, cfg, trainer.train_dataset), t.order
    trainer.remove_callback(PrinterCallback)  # our callback logs one readable line per step instead
    trainer.plain_loss = plain_loss(torch.cuda.is_available(), vision is not None)
    log("loss: the model's own, from the logits it reads" if trainer.plain_loss else "loss: TRL's fused LM head")
    return trainer, train_ds, val_ds


def linear_kernel(model: Any) -> None:
    """A CPU run's linear layers by the faster float32 kernel here (models/cpu_linear.py), said in the log."""
    from tunelab.models.cpu_linear import accelerate

    choice = accelerate(model)
    if choice is not None:
        log(f"linear layers: {choice.kernel.value} ({choice.reason})")


def plain_loss(cuda: bool, vision: bool) -> bool:
    """Whether the model computes its own loss (from the logits the loss reads) instead of TRL's fused LM head: on a
    CPU, for text rows packed or not, where the head's extras and its recomputed tiles cost time for nothing (a packed
    SmolLM2 step 1.6× as long, docs/benchmarks.md). A GPU keeps TRL's head, which the memory simulator models; images
    keep TRL's path, whose processor-made labels it handles."""
    return not cuda and not vision


def attention_of(cfg: RunConfig) -> str:
    """The `attn_implementation` of the run's attention (`auto` resolved as plan resolves it; varlen registered)."""
    import importlib.util
    import json

    from tunelab.errors import TunelabError
    from tunelab.models.attention import AttentionKind, register_attention, resolve_attention

    t = cfg.training
    assert t is not None
    config_file = Path(cfg.model.path) / "config.json"
    model_config = json.loads(config_file.read_text()) if config_file.is_file() else None
    choice = resolve_attention(t.attention, t.packing, model_config)
    if choice.kind is AttentionKind.FLASH_ATTENTION_2 and importlib.util.find_spec("flash_attn") is None:
        raise TunelabError("training.attention: flash_attention_2 needs the flash-attn package (or use auto: varlen "
                           "per example needs nothing beyond PyTorch)", file=cfg.run_dir / "run.yaml",
                           field="training.attention")
    if choice.kind is AttentionKind.VARLEN:
        register_attention()
    log(f"attention: {choice.describe()}")  # a fallback the kernel needs is named here, once, in train.log
    return choice.implementation


def build_datasets(cfg: RunConfig, tokenizer: Any) -> tuple[Any, Any | None]:
    """Tokenize train (and validation) with the shared PromptFormat: input_ids + completion_mask."""
    from datasets import Dataset

    from tunelab.data.formatting import prompt_format_of
    from tunelab.data.splits import load_data

    data = load_data(cfg.dataset, cfg.experiment_dir)
    reader = data.reader(cfg.prompt, cfg.system_prompt)
    fmt = prompt_format_of(cfg)

    def encode(split: str) -> Dataset:
        return Dataset.from_list(fmt.encode_examples(data.examples(split, reader), tokenizer))

    val = encode("validation") if cfg.training is not None and cfg.training.validation_every_steps else None
    return encode("train"), val


def _sft_config(t: TrainingConfig, state_dir: Path, dtype: Any, validate: bool, strategy: Strategy | None = None
                ) -> Any:
    import torch
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(state_dir),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_steps if t.warmup_steps is not None else t.warmup_ratio,
        weight_decay=t.weight_decay,
        logging_steps=t.logging_steps,
        save_strategy="epoch",
        eval_strategy="steps" if validate else "no",
        eval_steps=t.validation_every_steps,
        seed=t.seed,
        data_seed=t.seed,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu=not torch.cuda.is_available(),
        **_checkpointing_args(t.gradient_checkpointing),
        report_to="none",
        disable_tqdm=True,
        # the Trainer's filter reads every micro-batch's loss on the host (two GPU syncs each) to replace a NaN or
        # inf by the mean of earlier ones: a diverged run's loss would read finite; off, metrics.jsonl shows it and
        # the report's nan-loss check sees it at its first step
        logging_nan_inf_filter=False,
        max_length=t.max_seq_len,
        packing=t.packing,
        packing_strategy="bfd",
        completion_only_loss=True,
        **dataloader_args(resolve_workers(t.dataloader_workers, torch.cuda.is_available(), world().size),
                          torch.cuda.is_available()),
        save_only_model=False,
        **trainer_args(strategy, torch.cuda.is_available()),
        **optimizer_args(torch.cuda.is_available()),
    )


FUSED_ADAMW = "adamw_torch_fused"


def optimizer_args(cuda: bool) -> dict[str, Any]:
    """AdamW's fused kernel on a GPU (one launch per chunk: a small LoRA step is mostly launches); a CPU's default."""
    return {"optim": FUSED_ADAMW} if cuda else {}


def _checkpointing_args(enabled: bool) -> dict[str, Any]:
    """Always explicit: TRL turns activation checkpointing on by default, which would make speed a library default."""
    args: dict[str, Any] = {"activation_checkpointing": enabled}
    if enabled:
        args["activation_checkpointing_kwargs"] = {"use_reentrant": False}
    return args
