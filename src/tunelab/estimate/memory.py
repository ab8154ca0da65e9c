"""Peak training memory of a LoRA run, as a function of **tokens per micro-batch** (packed: batch × max_seq_len,
unpacked: batch × padded length): why a batch that fitted unpacked OOMs once packing is on.

Terms: frozen weights (NF4 under QLoRA); LoRA weights, gradients and AdamW states; activations per token per layer (one
layer input under checkpointing); fp32 logits over the loss chunks (often the largest term with a large vocabulary);
runtime overhead."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tunelab.catalog import Architecture
from tunelab.estimate.simulator.spec import StepConfig
from tunelab.models.attention import resolve_attention

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GIB = 2**30

# Activation bytes per token per layer ≈ dtype_bytes × (H_COEF·hidden + I_COEF·intermediate + KV_COEF·kv_dim):
# inputs of q/k/v/o and norms, q/k/v/attention outputs (≈10 × hidden); gate, up, activation and down inputs
# (≈4 × intermediate); k and v (2 × kv dim). SDPA/flash attention: no seq² term.
H_COEF, I_COEF, KV_COEF = 10.0, 4.0, 2.0
# fp32 logits, their log-softmax and their gradient live at once at the loss.
LOGIT_COPIES = 3.0
RUNTIME_OVERHEAD_GIB = 0.75  # CUDA context, allocator slack, kernels' workspaces
# QLoRA (Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs", §2-3): NF4 stores 4 bits per
# weight; blocks of 64 weights share an absmax constant, and double quantization stores those as 8-bit values with
# one fp32 constant per 256 blocks: 8/64 + 32/(64·256) = 0.127 bits per parameter. bitsandbytes quantizes the
# Linear layers only: embeddings and lm_head stay in the compute dtype (norms too; they are negligible).
NF4_BYTES_PER_PARAM = 0.5
NF4_CONSTANT_BYTES_PER_PARAM = (8 / 64 + 32 / (64 * 256)) / 8


@dataclass(frozen=True)
class MemoryInputs:
    dtype: str = "bfloat16"
    lora_rank: int = 8
    lora_targets: tuple[str, ...] | str = "all-linear"
    modules_to_save: tuple[str, ...] = ()
    activation_checkpointing: bool = False
    loss_chunks: int = 1
    optimizer_bytes_per_param: int = 8  # AdamW: two fp32 moments
    quantize: str | None = None  # "4bit": QLoRA's NF4 base
    lora_alpha: float | None = None  # None: 2 × rank, as the spec's default
    lora_dropout: float = 0.0
    attention: str = "sdpa"
    qlora_frozen_dtype: str = "auto"
    gradient_accumulation_steps: int = 1
    weight_decay: float = 0.0
    # Vision-language runs: images in each example and the patch grid (t, h, w) of one at the pixel budget
    # (models/vision.py); the simulator runs them through the vision tower (the analytic model ignores them)
    images_per_example: int = 0
    image_grid: tuple[int, int, int] = (0, 0, 0)

    def step_config(self) -> StepConfig:
        """The simulator's view of the same run (estimate/simulator)."""
        return StepConfig(
            dtype=self.dtype, lora_rank=self.lora_rank,
            lora_alpha=float(self.lora_alpha if self.lora_alpha is not None else 2 * self.lora_rank),
            lora_dropout=self.lora_dropout,
            lora_targets=self.lora_targets if isinstance(self.lora_targets, str) else tuple(self.lora_targets),
            modules_to_save=tuple(self.modules_to_save), gradient_checkpointing=self.activation_checkpointing,
            quantize=self.quantize, attention=self.attention, qlora_frozen_dtype=self.qlora_frozen_dtype,
            gradient_accumulation_steps=max(1, self.gradient_accumulation_steps), weight_decay=self.weight_decay)

    @classmethod
    def of_training(cls, t: Any, dtype: str) -> MemoryInputs:
        """From a run's training config (spec/training.py) and the dtype it trains in on the target GPU."""
        targets = tuple(t.lora_target_modules) if isinstance(t.lora_target_modules, list) else t.lora_target_modules
        return cls(attention=resolve_attention(t.attention, t.packing).kind.value, qlora_frozen_dtype=t.qlora_frozen_dtype,
                   dtype=dtype, lora_rank=t.lora_rank, lora_targets=targets, modules_to_save=tuple(t.modules_to_save),
                   activation_checkpointing=t.gradient_checkpointing, quantize=t.quantize,
                   lora_alpha=t.effective_lora_alpha, lora_dropout=t.lora_dropout,
                   gradient_accumulation_steps=t.gradient_accumulation_steps, weight_decay=t.weight_decay)


@dataclass
class MemoryEstimate:
    tokens_per_microbatch: int
    weights_gib: float
    trainable_params: int
    trainable_gib: float
    activations_gib: float
    logits_gib: float
    overhead_gib: float
    calibration: float = 1.0
    source: str = "model"
    notes: list[str] = field(default_factory=list)

    @property
    def peak_gib(self) -> float:
        raw = self.weights_gib + self.trainable_gib + self.activations_gib + self.logits_gib + self.overhead_gib
        return raw * self.calibration

    def to_dict(self) -> dict:
        return {**asdict(self), "peak_gib": round(self.peak_gib, 3)}


def lora_params(arch: Architecture, rank: int, targets: tuple[str, ...] | str) -> int:
    shapes = arch.linear_shapes()
    names = list(shapes) if targets == "all-linear" else [t for t in targets if t in shapes]
    return arch.layers * sum(rank * (shapes[n][0] + shapes[n][1]) for n in names)


def full_module_params(arch: Architecture, modules: tuple[str, ...]) -> int:
    per = {"embed_tokens": arch.embedding_params, "lm_head": arch.embedding_params}
    return sum(per.get(m, 0) for m in modules)


def activation_bytes_per_token(arch: Architecture, dtype_bytes: int, checkpointing: bool) -> float:
    per_layer = dtype_bytes * (H_COEF * arch.hidden + I_COEF * arch.intermediate + KV_COEF * arch.kv_heads * arch.head_dim)
    if checkpointing:
        # each layer keeps its input; one layer's activations are rebuilt at a time in backward
        return arch.layers * dtype_bytes * arch.hidden + per_layer
    return arch.layers * per_layer


def base_weight_bytes(arch: Architecture, dtype_bytes: int, quantize: str | None) -> float:
    """Bytes of the frozen base: every parameter in the compute dtype, or with 4-bit NF4 the linear layers at
    NF4_BYTES_PER_PARAM + NF4_CONSTANT_BYTES_PER_PARAM and the embeddings (and an untied lm_head) unquantized."""
    if quantize != "4bit":
        return arch.parameters * dtype_bytes
    kept = arch.embedding_params * (1 if arch.tied_embeddings else 2)
    return (arch.parameters - kept) * (NF4_BYTES_PER_PARAM + NF4_CONSTANT_BYTES_PER_PARAM) + kept * dtype_bytes


# FSDP gathers one wrapped unit (a decoder layer) for compute while it prefetches the next.
FSDP_GATHERED_UNITS = 2


def estimate_memory(arch: Architecture, tokens: int, inputs: MemoryInputs, calibration: float = 1.0,
                    source: str = "model", shards: int = 1) -> MemoryEstimate:
    """Predicted peak memory of one device for `tokens` tokens per micro-batch. shards=N (FSDP): weights, gradients and
    optimizer states divided by N plus the layers gathered whole; activations stay per device."""
    b = DTYPE_BYTES[inputs.dtype]
    lora = lora_params(arch, inputs.lora_rank, inputs.lora_targets)
    full = full_module_params(arch, inputs.modules_to_save)
    # LoRA weights are kept in fp32 (PEFT autocasts adapters): weight + grad + optimizer states.
    trainable_bytes: float = lora * (4 + 4 + inputs.optimizer_bytes_per_param) + full * (b + b + inputs.optimizer_bytes_per_param)
    weights = base_weight_bytes(arch, b, inputs.quantize)
    if shards > 1:
        layer = max(0, arch.parameters - arch.embedding_params) / max(1, arch.layers) * b
        weights = weights / shards + FSDP_GATHERED_UNITS * layer
        trainable_bytes /= shards
    act = activation_bytes_per_token(arch, b, inputs.activation_checkpointing) * tokens
    logits = tokens * arch.vocab * 4 * LOGIT_COPIES / max(1, inputs.loss_chunks)
    return MemoryEstimate(
        tokens_per_microbatch=tokens,
        weights_gib=weights / GIB,
        trainable_params=lora + full,
        trainable_gib=trainable_bytes / GIB,
        activations_gib=act / GIB,
        logits_gib=logits / GIB,
        overhead_gib=RUNTIME_OVERHEAD_GIB,
        calibration=calibration,
        source=source,
    )
