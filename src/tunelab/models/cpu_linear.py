"""A model's linear layers on a CPU through oneDNN, where it is the faster float32 kernel on this machine.

Why: PyTorch's CPU build multiplies float32 matrices with MKL, which picks its code path by CPU vendor. On an AMD
EPYC (Zen 5, AVX-512) it reaches ~108 GFLOP/s a core where oneDNN, shipped in the same wheel and dispatched by
instruction set, reaches ~240 at every shape of SmolLM2's layers, both directions, within float32's rounding
(docs/benchmarks.md, "oneDNN's float32 products"). A training step there is 82 % matrix products, so the kernel
decides most of its time. On a CPU where MKL is as fast, nothing changes: the choice is timed per machine, thread
count and layer shape (cached), and checked against PyTorch's own product before it is used.

Installed per module (`install`): a plain float32 `nn.Linear` on the CPU keeps its weight and its state dict, and
only its forward goes through `OneDnnLinear`, which reads the weight at every call (a merged adapter is seen) and
returns the gradients autograd asks for. Anything else (another dtype or device, a sharded DTensor weight, autocast,
an empty input) takes PyTorch's own `F.linear`. `TUNELAB_CPU_MATMUL=aten|onednn|auto` overrides the choice."""

from __future__ import annotations

import time
import types
from functools import lru_cache
from importlib.metadata import version
from typing import Any

import torch

from tunelab.diskcache import cached_json
from tunelab.host.machine import machine_key
from tunelab.models.linear_kernel import ENV, KernelChoice, MatmulKernel, linear_mode, pick

TIMED_ROWS = 256  # rows of the product timed for the choice (a micro-batch's tokens, or a batch's prompts)
ROUNDS = 5  # interleaved rounds of both kernels; each kernel's median is compared
AGREEMENT = 1e-4  # most a product may differ from PyTorch's, relative to its largest entry (float32 rounding: ~1e-6)


def _onednn(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(rows, weight, bias, "none", [], "")


class OneDnnLinear(torch.autograd.Function):
    """y = x Wᵀ + b by oneDNN; backward: dx = g W by oneDNN, dW and db only where autograd asks for them."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]).contiguous()
        ctx.save_for_backward(rows if ctx.needs_input_grad[1] else None, weight)
        ctx.has_bias = bias is not None
        return _onednn(rows, weight, bias).reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        rows, weight = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1]).contiguous()
        dx = _onednn(g, weight.t(), None).reshape(*grad.shape[:-1], weight.shape[1]) if ctx.needs_input_grad[0] else None
        dw = g.t() @ rows if ctx.needs_input_grad[1] else None
        db = g.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db


def _served(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether OneDnnLinear takes this call: float32 plain tensors on the CPU, outside autocast, with rows."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and type(weight) in (torch.nn.Parameter, torch.Tensor) and type(x) in (torch.nn.Parameter, torch.Tensor)
            and x.numel() > 0 and not torch.is_autocast_enabled("cpu"))


def _forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if _served(x, self.weight):
        return OneDnnLinear.apply(x, self.weight, self.bias)
    return torch.nn.functional.linear(x, self.weight, self.bias)


def install(model: torch.nn.Module, choice: KernelChoice) -> int:
    """Route the model's plain float32 CPU `nn.Linear` layers through oneDNN when `choice` says so; how many."""
    if choice.kernel is not MatmulKernel.ONEDNN:
        return 0
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and module.weight.dtype == torch.float32 and module.weight.device.type == "cpu":
            module.forward = types.MethodType(_forward, module)  # type: ignore[method-assign]
            count += 1
    return count


def installed(module: torch.nn.Module) -> bool:
    forward = module.__dict__.get("forward")
    return getattr(forward, "__func__", None) is _forward


def kernel_of(model: torch.nn.Module) -> MatmulKernel:
    """The kernel the model's linear layers run: oneDNN once any is installed."""
    return MatmulKernel.ONEDNN if any(installed(m) for m in model.modules()) else MatmulKernel.ATEN


def _time_both(in_features: int, out_features: int) -> dict[str, Any]:
    """Both kernels on TIMED_ROWS × in_features by the layer's weight, forward and backward products, interleaved;
    oneDNN's result checked against PyTorch's first (a kernel that disagrees is never used)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(TIMED_ROWS, in_features, generator=gen)
    w = torch.randn(out_features, in_features, generator=gen)
    g = torch.randn(TIMED_ROWS, out_features, generator=gen)
    try:
        ours, theirs = _onednn(x, w, None), torch.nn.functional.linear(x, w)
    except (RuntimeError, AttributeError, NotImplementedError) as exc:  # a build without the op, or one refusing it
        return {"kernel": MatmulKernel.ATEN.value, "why": f"oneDNN's linear is not callable here ({exc})"}
    error = float((ours - theirs).abs().max() / theirs.abs().max().clamp_min(1e-30))
    if not error <= AGREEMENT:
        return {"kernel": MatmulKernel.ATEN.value, "why": f"oneDNN's product differs from PyTorch's by {error:.1e}"}
    runs: dict[MatmulKernel, list[float]] = {MatmulKernel.ATEN: [], MatmulKernel.ONEDNN: []}
    calls = {MatmulKernel.ATEN: lambda: (torch.nn.functional.linear(x, w), g @ w),
             MatmulKernel.ONEDNN: lambda: (_onednn(x, w, None), _onednn(g, w.t(), None))}
    for call in calls.values():
        call()  # each kernel's first call builds its primitives
    for _ in range(ROUNDS):
        for kernel, call in calls.items():
            t0 = time.perf_counter()
            call()
            runs[kernel].append(time.perf_counter() - t0)
    kernel, gain = pick(runs[MatmulKernel.ATEN], runs[MatmulKernel.ONEDNN])
    return {"kernel": kernel.value, "why": f"oneDNN {gain:.2f}× PyTorch's own on {TIMED_ROWS} × {in_features} × "
                                           f"{out_features}, timed here at {torch.get_num_threads()} thread(s)"}


@lru_cache(maxsize=64)
def _chosen(in_features: int, out_features: int, threads: int) -> KernelChoice:
    key = [*machine_key(), version("torch"), threads, in_features, out_features]
    got = cached_json("cpu-linear", key, lambda: _time_both(in_features, out_features))
    return KernelChoice(MatmulKernel(got["kernel"]), got["why"])


def choose(in_features: int, out_features: int) -> KernelChoice:
    """The faster float32 kernel for this layer shape at this process's thread count (timed once per machine);
    `TUNELAB_CPU_MATMUL` set to a kernel's name overrides it."""
    wanted = linear_mode()
    if wanted != "auto":
        return KernelChoice(MatmulKernel(wanted), f"{ENV}={wanted}")
    return _chosen(in_features, out_features, torch.get_num_threads())


def product(in_features: int, out_features: int) -> Any:
    """x @ Wᵀ by the kernel chosen for this shape (a plan times a large model's products with it)."""
    if choose(in_features, out_features).kernel is MatmulKernel.ONEDNN:
        return lambda x, w: _onednn(x, w, None)
    return torch.nn.functional.linear


def widest_linear(model: torch.nn.Module) -> tuple[int, int] | None:
    """(in, out) features of the model's largest plain linear layer below its LM head: the shape timed for it."""
    shapes = [(m.in_features, m.out_features) for name, m in model.named_modules()
              if type(m) is torch.nn.Linear and not name.endswith("lm_head")]
    return max(shapes, key=lambda s: s[0] * s[1]) if shapes else None


def accelerate(model: torch.nn.Module) -> KernelChoice | None:
    """Choose for the model's widest layer and install; None when it has no plain linear layer or is not on a CPU."""
    param = next(model.parameters(), None)
    shape = widest_linear(model) if param is not None and param.device.type == "cpu" else None
    if shape is None:
        return None
    choice = choose(*shape)
    install(model, choice)
    return choice
