"""Training hyper-parameters of one run (spec `training:`); any field can be swept as a factor."""

from __future__ import annotations

import importlib.util
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tunelab.errors import TunelabError
from tunelab.spec.base import _Strict

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|min|m|h)\s*$")
_UNIT_S = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
QLORA_EXTRA_HINT = "install the qlora extra (pip install 'tunelab[qlora]')"


class ByField(_Strict):
    """Curriculum order by a field of the source rows (ascending; ties keep the file's order)."""

    by_field: str = Field(min_length=1)


class TrainingConfig(_Strict):
    """Hyper-parameters of one fine-tuning run. Any of them can be swept as a factor."""

    epochs: int = Field(3, ge=1)
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (debugging).")
    learning_rate: float = Field(2e-4, gt=0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    warmup_steps: int | None = Field(None, ge=0, description="Warm-up in optimizer steps; overrides warmup_ratio.")
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(8, ge=1, description="Micro-batch size per device (examples or packed sequences).")
    gradient_accumulation_steps: int = Field(1, ge=1)
    effective_batch: int | None = Field(
        None, ge=1, description="Examples (or packed sequences) per optimizer step over all processes: the "
        "scientific parameter. With levers: auto the plan splits it into micro-batch x accumulation x processes "
        "exactly; given beside batch_size and gradient_accumulation_steps it must equal their product.")
    levers: Literal["auto", "off"] | None = Field(
        None, description="auto: the plan chooses, per run, settings that keep the results the same and cut the "
        "time (the micro-batch x accumulation split holding the effective batch, gradient checkpointing only "
        "where the simulated peak needs it, checkpoint frequency from the save cost), each shown in plan.md "
        "with its predicted effect and source; fields set in the spec always win. Default: auto when "
        "resources.deadline is set, else off.")
    max_seq_len: int = Field(512, ge=8)
    packing: bool = Field(False, description="Best-fit-decreasing packing, padding-free, examples isolated.")
    min_pixels: int | None = Field(None, ge=1, description="Vision-language models: each image is resized to at "
                                   "least this many pixels (default: the model's image processor's).")
    max_pixels: int | None = Field(None, ge=1, description="Vision-language models: each image is resized to at "
                                   "most this many pixels, which bounds its image tokens and memory (default: the "
                                   "model's image processor's).")
    lora_rank: int = Field(8, ge=1)
    lora_alpha: float | None = Field(None, gt=0, description="Defaults to 2 x lora_rank.")
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_target_modules: list[str] | Literal["all-linear"] = "all-linear"
    modules_to_save: list[str] = Field(
        default_factory=list,
        description="Modules trained in full next to LoRA, e.g. [embed_tokens, lm_head] for random-init models.",
    )
    validation_every_steps: int | None = Field(None, ge=1, description="Validation loss every N steps; off if unset.")
    logging_steps: int = Field(10, ge=1)
    seed: int = 42
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    gradient_checkpointing: bool = False
    train_on_input: bool = Field(False, description="Loss on the prompt tokens too (default: the answer only).")
    checkpoint_every: int | str | None = Field(
        None, description="Also save the trainer state every N optimizer steps (200) or every so many minutes "
        "('30min', '2h'), beside the per-epoch checkpoints: a time limit, preemption or crash loses at most this.")
    keep_checkpoints: int | None = Field(
        None, ge=1, description="Trainer states kept on disk (the newest complete ones). Default: every epoch "
        "end and only the newest mid-epoch one. Epoch adapters (checkpoints/epoch_N) are always kept.")
    dataloader_workers: int | None = Field(
        None, ge=0, description="Dataloader worker processes per training process. Default: chosen in the job "
        "from the cores it may use (affinity, cgroup quota, Slurm allocation) on a GPU, 0 on CPU; recorded in "
        "summary.json.")
    order: Literal["shuffled", "as_given", "by_length"] | ByField = Field(
        "shuffled", description="Order examples are fed in each epoch: shuffled (seeded by `seed`), as_given "
        "(the file's order), by_length (shortest first), {by_field: NAME} (ascending); recorded per epoch in "
        "data_order.jsonl.")
    attention: Literal["auto", "varlen", "flex_attention", "flash_attention_2", "sdpa", "eager"] = Field(
        "auto", description="The attention kernel the run trains with. auto: per-sequence variable-length attention "
        "for packed rows (never a dense mask over the whole packed row), SDPA's fused kernels for unpacked ones; "
        "resolved once per run into run.yaml. sdpa/eager with packing build the dense (batch x length)^2 mask.")
    qlora_frozen_dtype: Literal["auto", "compute", "float32"] = Field(
        "auto", description="QLoRA: the dtype of the frozen embeddings, LM head and norms. float32 is peft's k-bit "
        "preparation (3.9 GiB instead of 2.0 for an 8B's embeddings and head); compute keeps them as loaded; auto: "
        "compute when training in bfloat16 (numerically safe: bf16 weights gain nothing in fp32), else float32.")
    quantize: Literal["4bit"] | None = Field(
        None, description="4bit: QLoRA, the base loaded in 4-bit NF4 (bitsandbytes, GPU only; the `qlora` extra).")

    @model_validator(mode="after")
    def _order_needs_unpacked(self) -> TrainingConfig:
        if self.order != "shuffled" and self.packing:
            raise ValueError("order: a curriculum order needs packing: false (packing regroups the examples "
                             "into sequences by length, so their order cannot be kept)")
        return self

    @field_validator("checkpoint_every")
    @classmethod
    def _interval(cls, v: int | str | None) -> int | str | None:
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v)
        if isinstance(v, int):
            if v < 1:
                raise ValueError("must be at least 1 step")
            return v
        if v is not None and _DURATION.match(v) is None:
            raise ValueError(f"{v!r}: give optimizer steps (200) or a duration such as '30min', '2h', '90s'")
        return v.strip() if v is not None else v

    @property
    def checkpoint_interval(self) -> tuple[int | None, float | None]:
        """(every N steps, every S seconds) from checkpoint_every; (None, None) when unset."""
        v = self.checkpoint_every
        if v is None or isinstance(v, int):
            return v, None
        m = _DURATION.match(v)
        if m is None:  # the validator admits only durations; a model built without validation may not
            raise TunelabError(f"checkpoint_every {v!r}: give optimizer steps (200) or a duration such as "
                               "'30min', '2h', '90s'")
        return None, float(m.group(1)) * _UNIT_S[m.group(2)]

    @property
    def lora_targets_text(self) -> str:
        """The targets as history rows record them: comma-separated names, or all-linear."""
        t = self.lora_target_modules
        return ",".join(t) if isinstance(t, list) else t

    @property
    def effective_lora_alpha(self) -> float:
        return self.lora_alpha if self.lora_alpha is not None else 2.0 * self.lora_rank

    def effective_batch_size(self, processes: int) -> int:
        """Examples (or packed sequences) per optimizer step: micro-batch × accumulation × processes.
        The one formula plan.md and summary.json both state."""
        return self.batch_size * self.gradient_accumulation_steps * max(1, processes)

    def planned_dtype(self, capability: tuple[int, int] | None) -> str:
        """The dtype the run will train in on a GPU of this compute capability (None: no GPU): what plan and
        validate model, and what the job resolves `auto` to (tunelab.host.device)."""
        from tunelab.host.device import auto_dtype_name

        return auto_dtype_name(capability) if self.dtype == "auto" else self.dtype

    def quantize_problem(self, cuda: bool) -> str | None:
        """Why a process with (or without) a CUDA GPU cannot train this run (None: it can)."""
        return quantize_problem(self.quantize, cuda)


def quantize_problem(quantize: str | None, cuda: bool) -> str | None:
    """Why a process with (or without) a CUDA GPU cannot train with `quantize` (None: it can, or nothing is
    quantized). bitsandbytes' 4-bit kernels need a CUDA GPU and the package itself."""
    if quantize is None:
        return None
    if not cuda:
        return (f"quantize: {quantize} (QLoRA) needs a CUDA GPU: bitsandbytes' 4-bit kernels do not run on CPU; "
                "name the GPU the jobs run on (--gpu) or remove quantize")
    if importlib.util.find_spec("bitsandbytes") is None:
        return f"quantize: {quantize} (QLoRA) needs bitsandbytes: {QLORA_EXTRA_HINT}"
    return None
