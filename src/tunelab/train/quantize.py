"""QLoRA (`training.quantize: 4bit`): the frozen base in 4-bit NF4 through transformers'
BitsAndBytesConfig, LoRA on top after peft's prepare_model_for_kbit_training.

bitsandbytes' 4-bit kernels need a CUDA GPU, so the refusal is made where it is cheap and clear: at
plan time (no GPU for the jobs, or bitsandbytes not installed), and again in the job before any weight
is loaded. The memory term is estimate/memory.py's base_weight_bytes.
"""

from __future__ import annotations

from typing import Any

from tunelab.errors import TunelabError
from tunelab.rundir.config import QUANTIZE_FIELD
from tunelab.spec.training import quantize_problem



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


def prepare(model, quantize: str | None, activation_checkpointing: bool):
    """peft's preparation of a k-bit base (norms in fp32, input grads for checkpointing); others unchanged."""
    if quantize is None:
        return model
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=activation_checkpointing)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _local_device() -> int:
    """This process's GPU (its local rank in a distributed run): a 4-bit model is placed at load time."""
    from tunelab.train.distributed import world

    return world().local_rank
