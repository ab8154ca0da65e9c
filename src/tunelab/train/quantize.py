"""QLoRA (`training.quantize: 4bit`): the frozen base in 4-bit NF4 through transformers'
BitsAndBytesConfig, LoRA on top after peft's prepare_model_for_kbit_training.

bitsandbytes' 4-bit kernels need a CUDA GPU, so the refusal is made where it is cheap and clear: at
plan time (no GPU for the jobs, or bitsandbytes not installed), and again in the job before any weight
is loaded. The memory term is estimate/memory.py's base_weight_bytes.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

FIELD = "training.quantize"
EXTRA_HINT = "install the qlora extra (pip install 'tunelab[qlora]')"


def quantize_problem(quantize: str | None, cuda: bool) -> str | None:
    """Why this process cannot train with `quantize` (None: it can, or nothing is quantized)."""
    if quantize is None:
        return None
    if not cuda:
        return (f"quantize: {quantize} (QLoRA) needs a CUDA GPU: bitsandbytes' 4-bit kernels do not run on CPU; "
                "name the GPU the jobs run on (--gpu) or remove quantize")
    if importlib.util.find_spec("bitsandbytes") is None:
        return f"quantize: {quantize} (QLoRA) needs bitsandbytes: {EXTRA_HINT}"
    return None


def check_plan(runs: list, gpu_named: bool, spec_path: Path) -> None:
    """Refuse a plan whose runs quantize while the jobs have no GPU or bitsandbytes is missing."""
    for cfg in runs:
        t = cfg.training
        problem = quantize_problem(t.quantize if t is not None else None, gpu_named)
        if problem:
            raise TunelabError(f"{cfg.name}: {problem}", file=spec_path, field=FIELD)


def load_kwargs(quantize: str | None, dtype) -> dict[str, Any]:
    """from_pretrained arguments: NF4 with double quantization, computing in the run's dtype."""
    if quantize is None:
        return {}
    problem = quantize_problem(quantize, _cuda())
    if problem:
        raise TunelabError(problem, field=FIELD)
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
