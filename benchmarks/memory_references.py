"""Simulated peak memory against peaks that public projects measured on GPUs and published with their
configuration (../shared/reference/published-gpu-memory.md). Prints one line per row tunelab can express
(same architecture, rank, targets, micro-batch, sequence length, packing, checkpointing, dtype), the rows it
cannot and why, and the median absolute error separately for rows of tunelab's own software stack
(transformers + PEFT) and for the others (torchtune, LitGPT). Nothing here is fitted: each row is the
simulated step of that configuration, compared with the counter the source reports.

    python benchmarks/memory_references.py [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass

from tunelab.estimate.simulator import StepConfig, StepShape, simulate

GIB = 2**30
# Public config.json facts (num_hidden_layers, hidden_size, ...) of the models the rows trained.
LLAMA_3_2_1B = dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                    num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
                    tie_word_embeddings=True, max_position_embeddings=131072, rope_theta=500000.0)
LLAMA_3_2_3B = dict(LLAMA_3_2_1B, hidden_size=3072, num_hidden_layers=28, num_attention_heads=24, head_dim=128)
LLAMA_3_1_8B = dict(LLAMA_3_2_1B, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    head_dim=128, tie_word_embeddings=False)
MISTRAL_7B_V01 = dict(model_type="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, vocab_size=32000, tie_word_embeddings=False,
                      max_position_embeddings=32768, rope_theta=10000.0, sliding_window=4096)
QV = ("q_proj", "v_proj")
ATTN_MLP = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Reference:
    row: int
    label: str
    stack: str  # "hf" (transformers + PEFT, tunelab's) or the other project's
    model: dict
    config: StepConfig
    shape: StepShape
    published_gib: float
    counter: str  # "allocated" | "reserved" | "active"
    differs: str  # what the source's step does that this one does not


LITGPT = "LitGPT's own model; adapters bf16; peak includes model loading and validation"


def litgpt(row: int, name: str, model: dict, batch: int, published: float, differs: str = LITGPT) -> Reference:
    """LitGPT's config_hub LoRA rows: r32/alpha16 on query and value, pure bf16, micro-batch × 512, no
    checkpointing; max_memory_allocated."""
    return Reference(row, f"LitGPT, {name} r32 q,v, bs{batch}×512", "litgpt", model,
                     StepConfig(dtype="bfloat16", lora_rank=32, lora_alpha=16, lora_dropout=0.05, lora_targets=QV,
                                loss="full_logits", autocast=False),
                     StepShape(batch, 512), published, "allocated", differs)


def references() -> list[Reference]:
    bf16 = dict(dtype="bfloat16")
    return [
        Reference(17, "PEFT MetaMathQA, Llama-3.2-3B r32 q,v, bs4×768 padded", "hf", LLAMA_3_2_3B,
                  StepConfig(**bf16, lora_rank=32, lora_alpha=64, lora_targets=QV, loss="full_logits",
                             autocast=False, weight_decay=0.1),
                  StepShape(4, 768), 20.76, "reserved",
                  "peak spans validation generation at batch 50; empty_cache every 10 steps (training-step p99: 18.74)"),
        Reference(19, "PEFT MetaMathQA, Llama-3.2-3B r32 q,v DoRA, bs4×768 padded", "hf", LLAMA_3_2_3B,
                  StepConfig(**bf16, lora_rank=32, lora_alpha=64, lora_targets=QV, loss="full_logits",
                             autocast=False, weight_decay=0.1, use_dora=True),
                  StepShape(4, 768), 22.85, "reserved",
                  "peak spans validation generation at batch 50 (training-step p99: 20.66)"),
        Reference(22, "fms-acceleration, Mistral-7B r16 q,k,v,o, packed 4×4096, ckpt, FA2", "hf", MISTRAL_7B_V01,
                  StepConfig(**bf16, lora_rank=16, lora_alpha=16, lora_dropout=0.1, lora_targets=ATTN_MLP[:4],
                             gradient_checkpointing=True, attention="flash_attention_2", loss="full_logits",
                             autocast=False, weight_decay=0.01),
                  StepShape(4, 4096, packed=True), 24.87, "allocated", "TRL of early 2025: full logits"),
        Reference(24, "fms-acceleration, Mistral-7B QLoRA r16 q,k,v,o, packed 4×4096, ckpt, FA2", "hf",
                  MISTRAL_7B_V01,
                  StepConfig(**bf16, lora_rank=16, lora_alpha=16, lora_targets=ATTN_MLP[:4], quantize="4bit",
                             gradient_checkpointing=True, attention="flash_attention_2", loss="full_logits",
                             weight_decay=0.01),
                  StepShape(4, 4096, packed=True), 19.25, "allocated", "TRL of early 2025: full logits"),
        Reference(3, "torchtune, Llama-3.1-8B r8 q,v, packed 2×2048, ckpt", "torchtune", LLAMA_3_1_8B,
                  StepConfig(**bf16, lora_rank=8, lora_alpha=16, lora_targets=QV, gradient_checkpointing=True,
                             loss="full_logits", autocast=False, weight_decay=0.01),
                  StepShape(2, 2048, packed=True), 16.2, "unstated",
                  "chunked cross-entropy, torch.compile, fp32 adapters not kept, flex/SDPA on packed rows"),
        Reference(5, "torchtune, Llama-3.1-8B QLoRA r8 attn+MLP, packed 2×2048, ckpt", "torchtune", LLAMA_3_1_8B,
                  StepConfig(**bf16, lora_rank=8, lora_alpha=16, lora_targets=ATTN_MLP, quantize="4bit",
                             gradient_checkpointing=True, loss="full_logits", weight_decay=0.01),
                  StepShape(2, 2048, packed=True), 7.4, "unstated",
                  "torchao NF4 (no bnb prepare: embeddings stay bf16), chunked cross-entropy, torch.compile"),
        Reference(12, "torchtune, Llama-3.2-3B r64 q,v,o+MLP, packed 2×4096, ckpt", "torchtune", LLAMA_3_2_3B,
                  StepConfig(**bf16, lora_rank=64, lora_alpha=128,
                             lora_targets=("q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
                             gradient_checkpointing=True, loss="full_logits", autocast=False),
                  StepShape(2, 4096, packed=True), 8.5, "active",
                  "activation offloading to CPU, chunked cross-entropy, torch.compile"),
        litgpt(33, "Llama-3.2-1B", LLAMA_3_2_1B, 1, 4.18),
        litgpt(35, "Llama-3.2-3B", LLAMA_3_2_3B, 1, 9.01),
        litgpt(36, "Llama-3.1-8B", LLAMA_3_1_8B, 1, 18.37),
        litgpt(38, "Mistral-7B", MISTRAL_7B_V01, 2, 19.24,
               "LitGPT's own model (no mask: padded rows attend causally); peak includes loading and validation"),
    ]


# Rows of the reference file tunelab cannot express, and why.
NOT_EXPRESSIBLE = {
    "1, 2, 6-11": "full fine-tuning (tunelab trains LoRA adapters)",
    "4": "activation checkpointing not stated (the source's caveat: likely off, ~2x row 3)",
    "13, 34, 37": "torchao / bitsandbytes QLoRA with paged or 8-bit optimizers tunelab does not use",
    "14-16": "sequence length not stated",
    "29-32": "Qwen v1 is remote code (fused c_attn), not a transformers architecture; GPTQ bases",
    "39, 40": "targets, dtype, checkpointing and measurement not stated",
}


def compare(ref: Reference, exact: bool = True) -> dict:
    t0 = time.perf_counter()
    sim = simulate(ref.model, ref.config, ref.shape, exact=exact)
    predicted = sim.reserved_gib if ref.counter == "reserved" else sim.allocated_gib
    return {"row": ref.row, "label": ref.label, "stack": ref.stack, "counter": ref.counter,
            "published_gib": ref.published_gib, "predicted_gib": round(predicted, 2),
            "allocated_gib": round(sim.allocated_gib, 2), "reserved_gib": round(sim.reserved_gib, 2),
            "error_pct": round(100 * (predicted - ref.published_gib) / ref.published_gib, 1),
            "differs": ref.differs, "seconds": round(time.perf_counter() - t0, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="also write the rows as JSON here")
    parser.add_argument("--extrapolated", action="store_true", help="simulate 2 and 4 layers and extrapolate, as "
                        "the planner does (default: every layer)")
    args = parser.parse_args()
    rows = []
    print(f"{'row':>4} {'stack':9} {'counter':9} {'published':>9} {'simulated':>9} {'error':>7}  configuration")
    for ref in references():
        r = compare(ref, exact=not args.extrapolated)
        rows.append(r)
        print(f"{r['row']:>4} {r['stack']:9} {r['counter']:9} {r['published_gib']:>9.2f} {r['predicted_gib']:>9.2f} "
              f"{r['error_pct']:>+6.1f}%  {r['label']} ({r['seconds']} s)", flush=True)
    for stack, name in (("hf", "same stack (transformers + PEFT)"), (None, "other stacks (torchtune, LitGPT)")):
        errs = [abs(r["error_pct"]) for r in rows if (r["stack"] == "hf") == (stack == "hf")]
        print(f"median |error|, {name}: {statistics.median(errs):.1f} % over {len(errs)} rows")
    print("\nwhat differs per row:")
    for r in rows:
        print(f"  {r['row']}: {r['differs']}")
    print("\nnot expressible:")
    for key, why in NOT_EXPRESSIBLE.items():
        print(f"  {key}: {why}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
