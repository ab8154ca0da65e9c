"""Packed attention, measured side by side in one run: the dense-mask path (`attention: sdpa` with packing, what
tunelab trained with before) against `auto` (varlen: each example attended alone), then the simulated H100 figures
of the two shapes the lab cares about, before and after.

CPU part: the same packed micro-batches (8 rows × 1024 tokens, examples of mixed length 32–1024 drawn with a
seed, flattened into one row with restarting position ids as TRL's padding-free collator does) through a
random-init 4-layer Llama with LoRA r16 on every linear layer (tunelab's LoraConfig), forward + backward with
labels, fp32, one thread. Each variant runs in a process of its own, forked after the imports (torch,
transformers and PEFT are imported once, not once per variant): peak RSS above the process's RSS before the first
step (ru_maxrss), seconds per step as the mean of the timed steps after one warm-up step.

    python benchmarks/packing_attention.py [--rows 8] [--length 1024] [--steps 2] [--no-simulate] [--smoke]

--smoke: 2 rows × 128 tokens, 1 timed step, no simulation (largest_micro_batch's search takes minutes without
the cache): seconds of work beyond the imports (done once, before the variants' processes are forked), for
tests/e2e/test_benchmark_smoke.py.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

from forking import in_child

VARIANTS = {"dense mask (sdpa)": "sdpa", "auto (varlen)": "auto"}
SIMULATED = [  # (label, model, rank, targets, micro-batch, length, checkpointing)
    ("Llama-3.2-1B r64 packed 16 × 2048, no checkpointing", "Llama-3.2-1B", 64, 16, 2048, False),
    ("Llama-3.1-8B r16 packed 4 × 4096, checkpointing", "Llama-3.1-8B", 16, 4, 4096, True),
]


def packed_batch(rows: int, length: int, seed: int) -> tuple[list[int], list[int]]:
    """Example lengths filling rows × length tokens (each row filled by the examples drawn for it, the last one
    cut to fit, as a full BFD row), and the flattened position ids."""
    import random

    rng = random.Random(seed)
    lengths: list[int] = []
    for _ in range(rows):
        left = length
        while left:
            n = min(left, rng.randint(32, length))
            lengths.append(n)
            left -= n
    return lengths, [p for n in lengths for p in range(n)]


def measure(attention: str, rows: int, length: int, steps: int, seed: int) -> dict[str, float]:
    """One variant, in this process: peak RSS growth and seconds per forward + backward step."""
    import torch
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from tunelab.models.attention import resolve_attention
    from tunelab.models.lora import lora_config

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    choice = resolve_attention(attention, packed=True)
    if choice.implementation == "tunelab_varlen":
        from tunelab.models.attention import register_attention

        register_attention()
    cfg = AutoConfig.for_model("llama", hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                               num_attention_heads=4, num_key_value_heads=2, vocab_size=2048,
                               max_position_embeddings=length)
    model = get_peft_model(AutoModelForCausalLM.from_config(cfg, attn_implementation=choice.implementation),
                           lora_config(16, 32.0, 0.0, "all-linear", ()))
    model.train()
    lengths, positions = packed_batch(rows, length, seed)
    ids = torch.randint(0, 2048, (1, len(positions)))
    batch = {"input_ids": ids, "labels": ids.clone(), "position_ids": torch.tensor([positions])}
    start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, losses = [], []
    for step in range(steps + 1):
        t0 = time.perf_counter()
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        if step:  # the first step warms up
            times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds_per_step": sum(times) / len(times), "peak_rss_mib": (peak - start_rss) / 1024,
            "loss": losses[0], "examples": len(lengths), "tokens": len(positions), "kind": choice.kind.value}


def preload() -> None:
    """What measure() imports, imported once here so that each variant's forked process starts with it."""
    import peft  # noqa: F401
    import torch  # noqa: F401
    from transformers.models.llama import modeling_llama  # noqa: F401

    from tunelab.models import attention, lora  # noqa: F401


def simulated(attention: str) -> list[dict[str, object]]:
    """The H100 peak (reserved + CUDA context) and the largest micro-batch of each SIMULATED shape."""
    from tunelab.catalog import resolve_gpu
    from tunelab.estimate.memory import MemoryInputs
    from tunelab.estimate.peak import largest_micro_batch, predict_peak
    from tunelab.estimate.simulator import StepShape

    gpu = resolve_gpu("H100-80GB")
    out = []
    for label, model, rank, batch, length, ckpt in SIMULATED:
        inputs = MemoryInputs(dtype="bfloat16", lora_rank=rank, activation_checkpointing=ckpt, attention=attention)
        peak = predict_peak(model, inputs, StepShape(batch, length, packed=True))
        largest = largest_micro_batch(model, inputs, gpu.memory_gib, length, packed=True, longest=None)
        out.append({"shape": label, "required_gib": round(peak.required_gib, 2), "largest_micro_batch": largest,
                    "source": peak.source})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-simulate", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="2 rows × 128 tokens, 1 step, no simulation (seconds)")
    a = ap.parse_args()
    if a.smoke:
        a.rows, a.length, a.steps, a.no_simulate = 2, 128, 1, True
    os.environ.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")  # before torch is imported: one thread
    preload()
    cpu = {label: in_child(measure, attention, a.rows, a.length, a.steps, a.seed)
           for label, attention in VARIANTS.items()}
    dense, auto = cpu["dense mask (sdpa)"], cpu["auto (varlen)"]
    print(f"CPU, {a.rows} × {a.length} packed ({dense['examples']} examples, {dense['tokens']} tokens), "
          f"4-layer Llama, LoRA r16, fp32, 1 thread, mean of {a.steps} steps after 1 warm-up:")
    print("| attention | s/step | peak RSS above start (MiB) | loss |")
    print("|---|---|---|---|")
    for label, r in cpu.items():
        print(f"| {label} | {r['seconds_per_step']:.3f} | {r['peak_rss_mib']:,.0f} | {r['loss']:.5f} |")
    print(f"| ratio auto / dense | {auto['seconds_per_step'] / dense['seconds_per_step']:.2f} | "
          f"{auto['peak_rss_mib'] / dense['peak_rss_mib']:.2f} | |")
    if a.no_simulate:
        return
    print("\nSimulated on an H100-80GB (reserved + CUDA context; largest micro-batch that fits):")
    print("| shape | dense mask (sdpa) | auto (varlen) |")
    print("|---|---|---|")
    for before, after in zip(simulated("sdpa"), simulated("varlen")):
        print(f"| {before['shape']} | {before['required_gib']:.1f} GiB, max batch {before['largest_micro_batch']} | "
              f"{after['required_gib']:.1f} GiB, max batch {after['largest_micro_batch']} |")


if __name__ == "__main__":
    main()
