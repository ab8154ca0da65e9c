"""What `tunelab estimate` says of one configuration, as one typed record that the command, `tunelab init` and `tunelab
schema --output estimate` share, so a renamed field breaks them all at once. Parts computed only for some configurations
are left unset, and the JSON holds exactly the fields set."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tunelab.rundir.estimate import GpusNeeded
from tunelab.spec.resources import Strategy


class ConfigEstimate(BaseModel):
    """One configuration's memory, micro-batch and (with a dataset) time estimate."""

    model_config = ConfigDict(extra="forbid")

    # the configuration estimated
    model: str = Field(description="The architecture estimated (a known name or the model directory's).")
    parameters: int = Field(description="Its parameter count.")
    gpu: str = Field(description="The GPU estimated for.")
    gpu_memory_mib: int = Field(description="Its memory in MiB, as the device reports its total.")
    gpu_memory_gib: float = Field(description="The same in GiB.")
    max_seq_len: int = Field(description="Tokens per sequence.")
    lora_rank: int = Field(description="LoRA rank.")
    lora_targets: list[str] | str = Field(description="Modules LoRA adapts, or all-linear.")
    dtype: str = Field(description="Weights and activations (the compute dtype).")
    gradient_checkpointing: bool = Field(description="Activations recomputed in the backward pass.")
    quantize: str | None = Field(description="4bit: QLoRA's NF4 base (None: not quantized).")
    processes: int = Field(description="GPUs one run trains on (memory is per GPU).")
    strategy: Strategy | None = Field(description="ddp or fsdp with several GPUs (None: one).")
    attention: str = Field(description="The attention implementation resolved for this configuration.")
    attention_kernel: str = Field(description="That implementation in words (kernel, mask).")
    # the micro-batch's memory
    packed: bool = Field(description="Sequences packed (padding-free).")
    batch_size: int = Field(description="The micro-batch the peak is for.")
    tokens_per_microbatch: int = Field(description="Tokens in the largest micro-batch (what memory depends on).")
    peak_memory_gib: float = Field(description="Predicted peak per GPU: reserved + CUDA context (what must fit).")
    peak_allocated_gib: float | None = Field(description="The simulated step's peak of allocated memory.")
    peak_reserved_gib: float | None = Field(description="The simulated step's peak of the allocator's reserve.")
    cuda_context_gib: float = Field(description="Memory the CUDA context takes before any tensor.")
    peak_allocated_bytes: int | None = Field(description="The simulated allocated peak in bytes.")
    memory_breakdown_gib: dict[str, float] = Field(description="Where the memory goes, GiB per part.")
    analytic_peak_gib: float = Field(description="The analytic model's peak, beside the simulated one.")
    memory_source: str = Field(description="Where the peak came from (simulated step, or the analytic model).")
    simulation_s: float | None = Field(description="Seconds the simulation took (None: not simulated).")
    fits: bool = Field(description="The peak fits the GPU's memory.")
    max_batch_size: int = Field(description="The largest micro-batch that fits (0: none does).")
    recommended_batch_size: int = Field(description="The micro-batch the planner would choose.")
    recommended_gradient_accumulation_steps: int = Field(description="Accumulation keeping the effective batch.")
    reasons: list[str] = Field(description="The rule that decided the micro-batch, and what the largest would give.")
    # a configuration that does not fit its GPUs
    gpus_needed: GpusNeeded | None = Field(default=None, description="Set when the micro-batch does not fit: the "
                                           "fewest GPUs whose FSDP-sharded peak fits, the nodes they take and the "
                                           "time on them.")
    # a vision-language model's images
    images: dict[str, Any] | None = Field(default=None, description="Images per example, their size, grid and "
                                          "tokens (set for a vision-language configuration).")
    est_seconds_per_micro_batch: float | None = Field(default=None, description="Time of a micro-batch (images).")
    # a measured dataset's epoch
    dataset: dict[str, Any] | None = Field(default=None, description="The dataset measured with the model's "
                                           "tokenizer: its splits' lengths, packing and padding.")
    packing_density: float | None = Field(default=None, description="Examples per packed sequence.")
    packing_efficiency: float | None = Field(default=None, description="Fill fraction of the packed sequences.")
    tokens_per_epoch: int | None = Field(default=None, description="Tokens processed per epoch (padding included "
                                         "unless packed).")
    steps_per_epoch: int | None = Field(default=None, description="Optimizer steps per epoch.")
    epochs: int | None = Field(default=None, description="Training epochs.")
    est_seconds_per_epoch: float | None = Field(default=None, description="Time of an epoch.")
    # the time model behind either
    est_tokens_per_s: float | None = Field(default=None, description="Tokens per second, FLOPs model.")
    est_source: str | None = Field(default=None, description="Where the time came from (model: FLOPs model).")
    est_note: str | None = Field(default=None, description="How the time was modelled, in words.")

    def to_json(self) -> dict[str, Any]:
        """The fields set, as `estimate --json` prints them."""
        return self.model_dump(mode="json", exclude_unset=True)
