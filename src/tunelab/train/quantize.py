"""QLoRA (`training.quantize: 4bit`): the frozen base in 4-bit NF4 (BitsAndBytesConfig), LoRA on top after
models/kbit.py's preparation. bitsandbytes' kernels need a CUDA GPU, so the refusal comes where cheap and clear: at plan
time, and again in the job before any weight loads."""

from __future__ import annotations

from typing import Any

from tunelab.errors import TunelabError
from tunelab.models.kbit import prepare_kbit
from tunelab.rundir.config import QUANTIZE_FIELD
from tunelab.spec.training import quantize_problem

# What the frozen embeddings, head and norms of a 4-bit base are kept in: auto | compute | float32
# (models/kbit.py). The default of the run field `training.qlora_frozen_dtype`.
QLORA_FROZEN_DTYPE = "auto"


def load_kwargs(quantize: str | None, dtype) -> dict[str, Any]:
    """from_pretrained arguments: NF4 with double quantization, computing in the run's dtype."""
    if quantize is None:
        return {}
    problem = quantize_problem(quantize, _cuda())
    if problem:
        raise TunelabError(problem, field=QUANTIZE_FIELD)
    from transformers import BitsAndBytesConfig

    return {"quantization_config": BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype), "device_map": {"": _local_device()}}


def prepare(model, quantize: str | None, activation_checkpointing: bool, frozen_dtype: str = QLORA_FROZEN_DTYPE):
    """The k-bit preparation of a 4-bit base (models/kbit.py); a model that is not quantized is unchanged."""
    return model if quantize is None else prepare_kbit(model, frozen_dtype, activation_checkpointing)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _local_device() -> int:
    """This process's GPU (its local rank in a distributed run): a 4-bit model is placed at load time."""
    from tunelab.train.distributed import world

    return world().local_rank
