"""Model architectures and GPUs: the facts the memory and speed models are built on.

Architecture comes from a local HF model dir's config.json when there is one; well-known models
have their config facts built in, so a plan for a cluster can be made on a laptop.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.models.architectures import KNOWN_FACTS, ModelFacts, known_key
from tunelab.models.vlm_architectures import VLM_CONFIGS


@dataclass(frozen=True)
class Architecture:
    name: str
    family: str  # llama | qwen2 | mistral | gemma | gemma2 | ...
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool
    biases: tuple[str, ...] = ()  # the linear layers (linear_shapes' names) that carry a bias
    qk_norm: bool = False  # an RMSNorm over q and k per head (Qwen3)
    facts: ModelFacts | None = field(default=None, compare=False, repr=False)  # a known model's config.json
    config: dict | None = field(default=None, compare=False, repr=False)  # a known VLM's whole config.json

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def params_per_layer(self) -> int:
        attn = self.hidden * self.heads * self.head_dim * 2 + self.hidden * self.kv_heads * self.head_dim * 2
        mlp = 3 * self.hidden * self.intermediate
        norms = 2 * self.hidden + (2 * self.head_dim if self.qk_norm else 0)
        shapes = self.linear_shapes()
        return attn + mlp + norms + sum(shapes[name][1] for name in self.biases)

    @property
    def parameters(self) -> int:
        head = 0 if self.tied_embeddings else self.embedding_params
        return self.embedding_params + head + self.layers * self.params_per_layer + self.hidden

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer LoRA may target, per transformer layer."""
        q = self.heads * self.head_dim
        kv = self.kv_heads * self.head_dim
        return {
            "q_proj": (self.hidden, q), "k_proj": (self.hidden, kv), "v_proj": (self.hidden, kv),
            "o_proj": (q, self.hidden), "gate_proj": (self.hidden, self.intermediate),
            "up_proj": (self.hidden, self.intermediate), "down_proj": (self.intermediate, self.hidden),
        }

    def to_dict(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k not in ("facts", "config")},
                "parameters": self.parameters}

    def hf_config(self) -> dict:
        """A transformers config.json with these facts, for building the model without its files (the memory
        simulator, `models random`): a known model's own config.json facts (models/architectures.py); else
        these shapes, family defaults filling the rest (Qwen2's q/k/v biases come with its model type)."""
        if self.facts is not None:
            return self.facts.to_config()
        if self.config is not None:  # a known vision-language model (models/vlm_architectures.py)
            return json.loads(json.dumps(self.config))
        return {"model_type": self.family, "hidden_size": self.hidden, "intermediate_size": self.intermediate,
                "num_hidden_layers": self.layers, "num_attention_heads": self.heads,
                "num_key_value_heads": self.kv_heads, "head_dim": self.head_dim, "vocab_size": self.vocab,
                "tie_word_embeddings": self.tied_embeddings, "max_position_embeddings": 131072,
                **({"sliding_window": None} if self.family in ("mistral", "qwen2") else {})}


def architecture_from_config(config: dict, name: str) -> Architecture:
    """Parse a transformers config.json (text config of multimodal ones too)."""
    c = config.get("text_config", config)
    family = str(c.get("model_type", config.get("model_type", "unknown")))
    try:
        hidden = int(c["hidden_size"])
        heads = int(c["num_attention_heads"])
        return Architecture(
            name=name,
            family=family,
            layers=int(c["num_hidden_layers"]),
            hidden=hidden,
            heads=heads,
            kv_heads=int(c.get("num_key_value_heads") or heads),
            head_dim=int(c.get("head_dim") or hidden // heads),
            intermediate=int(c["intermediate_size"]),
            vocab=int(c["vocab_size"]),
            tied_embeddings=bool(c.get("tie_word_embeddings", config.get("tie_word_embeddings", False))),
            biases=_biases(family, c),
            qk_norm=family == "qwen3",
        )
    except KeyError as exc:
        raise TunelabError(f"config.json lacks {exc.args[0]!r}: cannot model this architecture", field=name) from None


def _biases(family: str, c: dict) -> tuple[str, ...]:
    """Which linear layers carry a bias, as transformers builds the family: Qwen2 always on q, k and v;
    Llama-like models on q, k, v and o with `attention_bias`, on the MLP with `mlp_bias`."""
    attention: tuple[str, ...] = ("q_proj", "k_proj", "v_proj") if family == "qwen2" else ()
    if family != "qwen2" and c.get("attention_bias"):
        attention = ("q_proj", "k_proj", "v_proj", "o_proj")
    return attention + (("gate_proj", "up_proj", "down_proj") if c.get("mlp_bias") else ())


# Public config.json facts of well-known models (no weights needed to plan for them): models/architectures.py.
KNOWN_MODELS: dict[str, Architecture] = {
    f.name.lower(): replace(architecture_from_config(f.to_config(), f.name), facts=f) for f in KNOWN_FACTS
} | {name.lower(): replace(architecture_from_config(c, name), config=c) for name, c in VLM_CONFIGS.items()}


def known_architecture(model: str) -> Architecture | None:
    """A well-known model by name, with or without -Instruct / -vN / org/; None when it is not one."""
    return KNOWN_MODELS.get(known_key(model))


def resolve_architecture(model: str | Path) -> Architecture:
    """A local model dir (its config.json) or a well-known name (with or without -Instruct / org/)."""
    path = Path(model).expanduser()
    if path.is_dir():
        cfg = path / "config.json"
        if not cfg.is_file():
            raise TunelabError("no config.json: not a Hugging Face model directory", file=path)
        return architecture_from_config(json.loads(cfg.read_text()), path.name)
    known = known_architecture(str(model))
    if known is not None:
        return known
    raise TunelabError(
        f"'{model}' is neither a model directory nor a known model ({', '.join(a.name for a in KNOWN_MODELS.values())})",
        field="--model",
    )


@dataclass(frozen=True)
class GPU:
    """A GPU model. `memory_mib` is the total the device reports (nvidia-smi's `memory.total`, NVML's total),
    never the nominal GB read as GiB: an "80GB" H100 reports 81,559 MiB = 79.65 GiB, not 80 GiB. "Fits"
    compares the simulated reserved memory plus the CUDA context with it (estimate/peak.py).

    CUDA itself sees a little less: the driver keeps part of the total for itself (an H100's `nvidia-smi -q`:
    Total 81559 MiB, Reserved 551 MiB, Free 81007 MiB; torch's out-of-memory message says "total capacity of
    79.11 GiB"), so the last ~0.5 GiB below the total is not allocatable."""

    name: str
    memory_mib: float
    # Dense peak TFLOPS of bf16, the precision `dtype: auto` trains in (train/device.py), used by the FLOPs
    # time model. Before Ampere (compute capability < 8.0) there are no bf16 tensor cores and auto trains
    # fp32, so the figure is the fp32 peak of the CUDA cores, never the fp16 tensor-core one.
    bf16_tflops: float
    bandwidth_gbs: float
    compute_capability: tuple[int, int] | None = None

    @property
    def memory_gib(self) -> float:
        """The reported total in GiB (derived: `memory_mib` is the one figure kept)."""
        return self.memory_mib / 1024


# memory_mib: nvidia-smi's total of each model on current drivers (R535 and later), as pasted in public issues:
#  - A100-40GB 40960, A100-80GB 81920, H100 81559, L40S 46068, L4 23034: modal-labs/modal-client#2797 (a table
#    of nvidia-smi totals across Modal's fleet); H100 also NVIDIA/nccl#1264 (NVIDIA H100 80GB HBM3, 81559MiB).
#    Drivers before R510 printed the total less the driver's reservation (A100-SXM4-40GB: 40536MiB,
#    nanopool/phoenix-miner#17).
#  - H200 143771: nvidia-smi of 8 × NVIDIA H200, driver 570.158.01 (and others, 550–570), public READMEs.
#  - RTX A6000 49140: nvidia-smi tables of the NVIDIA RTX A6000 in public READMEs and issues.
#  - RTX 4090 24564: RLinf/RLinf#255 (NVIDIA GeForce RTX 4090, driver 550.163.01).
#  - V100-32GB 32768, V100-16GB 16384: Tesla V100-SXM2-32GB / -16GB on drivers 535–550; older drivers printed
#    32480 / 16130 (godweiyang/GrabGPU#5, yangjianxin1/GPT2-chitchat#19: driver 418).
#  - A10G 23028: NVIDIA/DCGM#232 (NVIDIA A10G, driver 535.247.01).
GPUS: dict[str, GPU] = {
    g.name.lower(): g
    for g in [
        GPU("A100-40GB", 40960, 312, 1555, (8, 0)),
        GPU("A100-80GB", 81920, 312, 2039, (8, 0)),
        GPU("H100-80GB", 81559, 989, 3350, (9, 0)),
        GPU("H200", 143771, 989, 4800, (9, 0)),
        GPU("L40S", 46068, 362, 864, (8, 9)),
        GPU("A6000", 49140, 155, 768, (8, 6)),
        GPU("RTX4090", 24564, 165, 1008, (8, 9)),
        GPU("V100-32GB", 32768, 15.7, 900, (7, 0)),  # SXM2; its 125 TFLOPS are fp16 tensor cores only
        GPU("V100-16GB", 16384, 15.7, 900, (7, 0)),
        GPU("L4", 23034, 121, 300, (8, 9)),
        GPU("A10G", 23028, 125, 600, (8, 6)),  # AWS g5; the A10's dense bf16 peak (the A10G's own is unpublished)
    ]
}
# GPUs one node holds when neither resources.node_gpus nor the user config says: the 8-GPU server (DGX/HGX A100,
# H100, H200; the cloud's p4d/p5/a3 instances) that clusters of these GPUs are mostly built from. An assumption,
# stated wherever the plan counts nodes with it (forecast/gpus.py NodeSize).
DEFAULT_NODE_GPUS = 8
_ALIASES = {"a100": "a100-80gb", "h100": "h100-80gb", "v100": "v100-32gb", "rtx-4090": "rtx4090", "4090": "rtx4090",
            "rtxa6000": "a6000", "rtx-a6000": "a6000", "h200-141gb": "h200", "a100-sxm4-80gb": "a100-80gb"}


def resolve_gpu(name: str) -> GPU:
    key = name.lower().replace(" ", "-").removeprefix("nvidia-")
    key = _ALIASES.get(key, key)
    if key in GPUS:
        return GPUS[key]
    raise TunelabError(f"unknown GPU '{name}'; known: {', '.join(g.name for g in GPUS.values())}", field="--gpu")


def nvidia_driver_present() -> bool:
    """Could CUDA see a GPU here at all? Without the NVIDIA driver (Linux: /proc/driver/nvidia, /dev/nvidia0)
    or with CUDA_VISIBLE_DEVICES empty it cannot, and importing torch to ask (about 2 s) is skipped."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    if sys.platform != "linux":
        return sys.platform != "darwin"  # Windows: ask torch; macOS has no CUDA
    return Path("/proc/driver/nvidia/version").exists() or any(Path("/dev").glob("nvidia[0-9]*"))


def planning_gpu(flag: str | None, named: str | None) -> GPU | None:
    """The GPU to plan for: --gpu, else the one named in the spec or user config (resources.gpu), else the
    one detected here, else None (this machine's CPU). A login node plans for where the jobs run."""
    if flag:
        return resolve_gpu(flag)
    return resolve_gpu(named) if named else detect_gpu()


def detect_gpu() -> GPU | None:
    """The local GPU, matched to the table by name and memory, or None without one."""
    if not nvidia_driver_present():
        return None
    try:
        import torch
    except ImportError:
        return None
    try:
        if not torch.cuda.is_available():
            return None
        props = torch.cuda.get_device_properties(0)
    except (RuntimeError, AssertionError) as exc:  # a broken driver: plan as without a GPU, but say so
        logging.getLogger("tunelab").warning("warning: GPU detection failed (%s); planning without a GPU", exc)
        return None
    mem = props.total_memory / 2**30
    return match_gpu(props.name, mem) or GPU(props.name, props.total_memory / 2**20, 0.0, 0.0,
                                              (props.major, props.minor))


def match_gpu(device_name: str, memory_gib: float) -> GPU | None:
    """The table's GPU for a CUDA device name (e.g. 'NVIDIA H100 80GB HBM3') and its memory in GiB as torch
    reports it (`total_memory / 2**30`, a few hundred MiB under the table's total: the driver's reservation),
    or None. The memory tells the 40 and 80 GB A100s (and the V100s) apart."""
    name = device_name.upper().replace(" ", "")
    return next((g for g in GPUS.values()
                 if g.name.split("-")[0].upper() in name and abs(g.memory_gib - memory_gib) < 0.15 * g.memory_gib), None)
