"""Which engine generates an evaluation's answers (eval.engine, `tunelab eval --engine`), and where vLLM lives. auto:
vllm where a vLLM is at hand and a GPU is visible, else hf: on a CPU, HF is the faster engine (docs/evaluation.md)."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass

from tunelab.errors import TunelabError
from tunelab.rundir.config import RunConfig
from tunelab.spec.evaluation import VLLM_PYTHON_ENV, Engine, VllmSpec


@dataclass(frozen=True)
class VllmHome:
    """Where tunelab finds vLLM: a running server's URL, else the interpreter that starts one."""

    python: str | None
    url: str | None

    def describe(self) -> str:
        return f"the server at {self.url}" if self.url else f"vLLM of {self.python}"


def vllm_home(spec: VllmSpec) -> VllmHome | None:
    """The vLLM named for the spec (url, else VllmSpec.named_python: python or $TUNELAB_VLLM_PYTHON, the rule the
    plan prices by), else this interpreter when vllm imports here."""
    if spec.url:
        return VllmHome(None, spec.url)
    python = spec.named_python()
    if python:
        return VllmHome(python, None)
    return VllmHome(sys.executable, None) if importlib.util.find_spec("vllm") is not None else None


def gpu_visible() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def resolve_engine(cfgs: list[RunConfig], override: str | None = None) -> tuple[Engine, VllmHome | None]:
    """The engine of one evaluation of these runs (they share one eval spec's choice: the first run's), and its
    vLLM when that is vllm. An explicit vllm without a vLLM at hand is an error saying where to get one."""
    if not cfgs:
        return Engine.HF, None
    spec = cfgs[0].eval
    try:
        engine = Engine(override or spec.engine)
    except ValueError:
        raise TunelabError(f"unknown engine {override!r}: hf or vllm", field="--engine") from None
    if engine == Engine.HF:
        return engine, None
    home = vllm_home(spec.vllm)
    client = importlib.util.find_spec("openai") is not None
    if engine == Engine.AUTO:
        return (Engine.VLLM, home) if home is not None and client and gpu_visible() else (Engine.HF, None)
    if home is None:
        raise TunelabError("engine vllm, but no vLLM is at hand: `pip install tunelab[vllm]` (GPU nodes), or "
                           "make an environment with scripts/vllm-env and name its interpreter in eval.vllm.python "
                           f"(or ${VLLM_PYTHON_ENV}), or a running server in eval.vllm.url", field="eval.engine")
    if not client:
        raise TunelabError("engine vllm needs the OpenAI client inspect-ai's vLLM provider talks through: "
                           "pip install 'tunelab[vllm-client]' (or tunelab[vllm])", field="eval.engine")
    return engine, home
