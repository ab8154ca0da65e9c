"""PyTorch's own float32 product (MKL on x86) against oneDNN's, side by side in one process: each linear layer shape
of a model, forward (x Wᵀ) and backward (g W), and a whole LoRA training step through each (models/cpu_linear.py),
at each thread count asked. What tunelab's choice rests on (it times one shape per machine, this one every shape).

Per shape: GFLOP/s of each kernel (median of --repeats timed calls after one warm-up, the two kernels interleaved),
oneDNN ÷ aten, and each product's largest error against a float64 product relative to its largest entry. The step:
SmolLM2-135M-Instruct's architecture (random weights; --smoke: the tiny model), LoRA rank 8 on q_proj and v_proj,
one packed micro-batch of 1 × --tokens tokens (five examples, restarting position ids), the loss on ~5 % of the
positions as a sweep's answers (logits_to_keep), backward and AdamW; each kernel's own model built from the same
seed; median of --repeats steps after one warm-up; the first step's loss each way.

    python benchmarks/linear_kernels.py [--threads 1 2] [--repeats 7] [--tokens 512] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import time
from statistics import median
from typing import Any

SHAPES = {"smollm2": [(576, 576), (576, 192), (576, 1536), (1536, 576), (576, 49152)],  # (in, out); last: LM head
          "tiny": [(128, 128), (128, 512), (512, 128)]}
HEAD_ROWS = 26  # rows the LM head sees in a sweep's step (its kept positions)


def _timed(call: Any, repeats: int) -> float:
    call()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return median(times)


def shape_rows(model: str, rows: int, repeats: int) -> list[str]:
    return [line for k, n in SHAPES[model] for line in _shape_lines(HEAD_ROWS if n > 10_000 else rows, k, n, repeats)]


def _shape_lines(m: int, k: int, n: int, repeats: int) -> list[str]:
    """Both directions of one shape: each kernel's GFLOP/s, their ratio and each one's error against float64."""
    import torch

    from tunelab.models.cpu_linear import _onednn

    gen = torch.Generator().manual_seed(0)
    x, w, g = torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen), torch.randn(m, n, generator=gen)
    ref = x.double() @ w.double().T
    errors = {name: float((y.double() - ref).abs().max() / ref.abs().max())
              for name, y in (("aten", torch.nn.functional.linear(x, w)), ("onednn", _onednn(x, w, None)))}
    kernels = {"aten": (lambda: torch.nn.functional.linear(x, w), lambda: g @ w),
               "onednn": (lambda: _onednn(x, w, None), lambda: _onednn(g, w.t(), None))}
    lines = []
    for direction in (0, 1):
        speed = {name: 2 * m * k * n / _timed(calls[direction], repeats) / 1e9 for name, calls in kernels.items()}
        lines.append(f"| {m} × {k} × {n} | {'forward' if direction == 0 else 'backward'} | {speed['aten']:.1f} | "
                     f"{speed['onednn']:.1f} | {speed['onednn'] / speed['aten']:.2f} | {errors['aten']:.1e} | "
                     f"{errors['onednn']:.1e} |")
    return lines


def build(model_dir: str, onednn: bool) -> tuple[Any, Any]:
    import torch
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from tunelab.models.cpu_linear import install
    from tunelab.models.linear_kernel import KernelChoice, MatmulKernel
    from tunelab.models.lora import lora_config

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(model_dir)
    config.use_cache = False
    base = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    if onednn:
        install(base, KernelChoice(MatmulKernel.ONEDNN, "benchmark"))
    model = get_peft_model(base, lora_config(8, 16, 0.0, ["q_proj", "v_proj"], []))
    model.train()
    return model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)


def _train_step(model: Any, opt: Any, batch: dict[str, Any]) -> float:
    loss = model(**batch).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.item())


def step_row(model_dir: str, tokens: int, repeats: int) -> str:
    import torch

    from tunelab.models.loss_positions import kept_logits_inputs

    cuts = [0, tokens // 8, tokens // 3, tokens // 2, 3 * tokens // 4, tokens]  # five examples of mixed lengths
    positions = torch.cat([torch.arange(b - a) for a, b in zip(cuts, cuts[1:])])[None]
    from transformers import AutoConfig

    vocab = min(1000, AutoConfig.from_pretrained(model_dir).vocab_size)
    ids = torch.randint(0, vocab, (1, tokens), generator=torch.Generator().manual_seed(0))
    labels = torch.full_like(ids, -100)
    for end in cuts[1:]:  # each example's last ~5 % of tokens: its answer
        labels[0, end - max(1, tokens // 100):end] = ids[0, end - max(1, tokens // 100):end]
    results = {}
    for name in ("aten", "onednn"):
        model, opt = build(model_dir, name == "onednn")
        batch = {"input_ids": ids, "position_ids": positions, "labels": labels, **kept_logits_inputs(labels)}
        first = _train_step(model, opt, batch)
        results[name] = (_timed(lambda m=model, o=opt, b=batch: _train_step(m, o, b), repeats), first)
    (a, la), (o, lo) = results["aten"], results["onednn"]
    return f"| 1 × {tokens} packed, LoRA r8 | {a:.3f} | {o:.3f} | {a / o:.2f} | {la:.6f} | {lo:.6f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--smoke", action="store_true", help="the tiny model's shapes and step, 2 repeats, 1 thread")
    args = parser.parse_args()
    import tempfile

    import torch

    model = "tiny" if args.smoke else "smollm2"
    threads, repeats, tokens = ([1], 2, 128) if args.smoke else (args.threads, args.repeats, args.tokens)
    with tempfile.TemporaryDirectory(prefix="linear-kernels-") as scratch:
        if args.smoke:
            from tunelab.models.tiny import build_tiny_model

            model_dir = str(build_tiny_model(os.path.join(scratch, "tiny"), layers=2, hidden=128, seed=0))
        else:
            from tunelab.models.smollm2 import build_smollm2

            model_dir = os.path.join(scratch, "smollm2")
            build_smollm2(model_dir, dtype="float32")
        print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        for n in threads:
            torch.set_num_threads(n)
            print(f"\n{model}, {n} thread(s): GFLOP/s, median of {repeats}")
            print("| rows × in × out | direction | aten | onednn | onednn ÷ aten | aten error | onednn error |")
            print("|---|---|---|---|---|---|---|")
            print("\n".join(shape_rows(model, tokens, repeats)))
            print("\n| step | aten s | onednn s | aten ÷ onednn | aten first loss | onednn first loss |")
            print("|---|---|---|---|---|---|")
            print(step_row(model_dir, tokens, repeats))
        print(f"\nload after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
