"""Simulated peak memory against peaks that public projects measured on GPUs and published with their
configuration (../shared/reference/published-gpu-memory.md). Prints one line per row tunelab can express
(same architecture, rank, targets, micro-batch, sequence length, packing, checkpointing, dtype), the rows it
cannot and why, and the median absolute error separately for rows of tunelab's own software stack
(transformers + PEFT) and for the others (torchtune, LitGPT). Nothing here is fitted: each row is the
simulated step of that configuration, compared with the counter the source reports.

Where a row's published figure spans more than training (PEFT's MetaMathQA peak is the whole run's
max_memory_reserved, validation generation at batch 50 included) and the source also records the training
steps' own figure (the 99th percentile of memory_reserved after each step), both are compared and printed;
the medians use the training-step figure, the one that measures what is simulated.

    python benchmarks/memory_references.py [--extrapolated] [--json OUT] [--markdown] [--smoke]

--smoke: two rows only (SMOKE_ROWS: one of tunelab's stack with a training-step figure, one of another stack),
extrapolated, with the markdown table: seconds, for tests/e2e/test_benchmark_smoke.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass

from tunelab.estimate.simulator import CUDA_CONTEXT_GIB, StepConfig, StepShape, simulate

GIB = 2**30
SMOKE_ROWS = (17, 33)
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
# Qwen2-VL-7B-Instruct's config.json (transformers' nested format): Qwen2-7B's language model with M-RoPE, and
# Qwen2-VL's 675M-parameter vision tower (32 blocks of 1280, a merger into 3584; its defaults in transformers).
QWEN2_VL_7B = dict(model_type="qwen2_vl", tie_word_embeddings=False, image_token_id=151655, video_token_id=151656,
                   vision_start_token_id=151652, vision_end_token_id=151653,
                   text_config=dict(model_type="qwen2_vl_text", vocab_size=152064, hidden_size=3584,
                                    intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                                    num_key_value_heads=4, max_position_embeddings=32768, rms_norm_eps=1e-06,
                                    rope_theta=1000000.0, tie_word_embeddings=False,
                                    rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}),
                   vision_config=dict(depth=32, embed_dim=1280, hidden_size=3584, mlp_ratio=4, num_heads=16,
                                      in_channels=3, patch_size=14, spatial_merge_size=2, temporal_patch_size=2))
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
    training_step_gib: float | None = None  # the source's training-step figure, where the published one spans more

    @property
    def compared_gib(self) -> float:
        """The figure the medians use: the training-step one where the source records it."""
        return self.training_step_gib if self.training_step_gib is not None else self.published_gib


LITGPT = "LitGPT's own model; adapters bf16; peak includes model loading and validation"


def litgpt(row: int, name: str, model: dict, batch: int, published: float, differs: str = LITGPT) -> Reference:
    """LitGPT's config_hub LoRA rows: r32/alpha16 on query and value, pure bf16, micro-batch × 512, no
    checkpointing; max_memory_allocated."""
    return Reference(row, f"LitGPT, {name} r32 q,v, bs{batch}×512", "litgpt", model,
                     StepConfig(dtype="bfloat16", lora_rank=32, lora_alpha=16, lora_dropout=0.05, lora_targets=QV,
                                loss="full_logits", autocast=False),
                     StepShape(batch, 512), published, "allocated", differs)


# PEFT's MetaMathQA runs: 768 tokens is the truncation limit, not the batches' length. The data are filtered to
# <= 1300 characters a sample (~210 tokens on average), batches are length-bucketed (longest first in each
# bucket of 20) and padded to their longest row, and memory_reserved is read after each step, with empty_cache
# every 10 steps: the training-step figure is the 99th percentile of those reads over 5000 steps of changing
# lengths; the whole run's peak also spans validation generation at batch 50. The script also keeps the
# previous step's outputs (logits, and the KV cache that use_cache builds without checkpointing) alive into
# the next forward; the simulated step does not.
PEFT_METAMATH = ("4 × 768 is the truncation limit: the source's batches are bucketed by length and shorter; "
                 "empty_cache every 10 steps; its outputs and KV cache live across steps")


def references() -> list[Reference]:
    bf16 = dict(dtype="bfloat16")
    return [
        Reference(17, "PEFT MetaMathQA, Llama-3.2-3B r32 q,v, bs4×768 padded", "hf", LLAMA_3_2_3B,
                  StepConfig(**bf16, lora_rank=32, lora_alpha=64, lora_targets=QV, loss="full_logits",
                             autocast=False, weight_decay=0.1),
                  StepShape(4, 768), 20.76, "reserved", PEFT_METAMATH, training_step_gib=18.74),
        Reference(19, "PEFT MetaMathQA, Llama-3.2-3B r32 q,v DoRA, bs4×768 padded", "hf", LLAMA_3_2_3B,
                  StepConfig(**bf16, lora_rank=32, lora_alpha=64, lora_targets=QV, loss="full_logits",
                             autocast=False, weight_decay=0.1, use_dora=True),
                  StepShape(4, 768), 22.85, "reserved", PEFT_METAMATH, training_step_gib=20.66),
        Reference(22, "fms-acceleration, Mistral-7B r16 q,k,v,o, packed 4×4096, ckpt, FA2", "hf", MISTRAL_7B_V01,
                  StepConfig(**bf16, lora_rank=16, lora_alpha=16, lora_dropout=0.1, lora_targets=ATTN_MLP[:4],
                             gradient_checkpointing=True, attention="flash_attention_2", loss="full_logits",
                             autocast=False, weight_decay=0.01),
                  StepShape(4, 4096, packed=True), 24.87, "allocated", "TRL of early 2025: full logits"),
        Reference(24, "fms-acceleration, Mistral-7B QLoRA r16 q,k,v,o, packed 4×4096, ckpt, FA2", "hf",
                  MISTRAL_7B_V01,
                  StepConfig(**bf16, lora_rank=16, lora_alpha=16, lora_targets=ATTN_MLP[:4], quantize="4bit",
                             qlora_frozen_dtype="float32", gradient_checkpointing=True,
                             attention="flash_attention_2", loss="full_logits", weight_decay=0.01),
                  StepShape(4, 4096, packed=True), 19.25, "allocated",
                  "TRL of early 2025: full logits; peft's k-bit preparation (frozen embeddings, head, norms in fp32)"),
        Reference(3, "torchtune, Llama-3.1-8B r8 q,v, packed 2×2048, ckpt", "torchtune", LLAMA_3_1_8B,
                  StepConfig(**bf16, lora_rank=8, lora_alpha=16, lora_targets=QV, gradient_checkpointing=True,
                             loss="full_logits", autocast=False, weight_decay=0.01),
                  StepShape(2, 2048, packed=True), 16.2, "unstated",
                  "chunked cross-entropy, torch.compile, fp32 adapters not kept, flex/SDPA on packed rows"),
        Reference(5, "torchtune, Llama-3.1-8B QLoRA r8 attn+MLP, packed 2×2048, ckpt", "torchtune", LLAMA_3_1_8B,
                  StepConfig(**bf16, lora_rank=8, lora_alpha=16, lora_targets=ATTN_MLP, quantize="4bit",
                             qlora_frozen_dtype="compute", gradient_checkpointing=True, loss="full_logits",
                             weight_decay=0.01),
                  StepShape(2, 2048, packed=True), 7.4, "unstated",
                  "torchao NF4 (frozen embeddings stay bf16, as simulated), chunked cross-entropy, torch.compile"),
        Reference(12, "torchtune, Llama-3.2-3B r64 q,v,o+MLP, packed 2×4096, ckpt", "torchtune", LLAMA_3_2_3B,
                  StepConfig(**bf16, lora_rank=64, lora_alpha=128,
                             lora_targets=("q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
                             gradient_checkpointing=True, loss="full_logits", autocast=False),
                  StepShape(2, 4096, packed=True), 8.5, "active",
                  "activation offloading to CPU, chunked cross-entropy, torch.compile"),
        # Vision-language (not in the reference file): ms-swift's examples/train/multimodal/grounding.sh states
        # "# 20GiB" for LoRA r8/alpha 32 all-linear with freeze_vit, bs 1, max_length 2048, MAX_PIXELS 1003520,
        # bf16, swift's defaults (gradient checkpointing on, SDPA, loss from full logits); counter unstated (a
        # script comment, likely nvidia-smi). Its data (COCO grounding) are ~640x480 photos, resized to 644x476:
        # grid 34 x 46, 391 image tokens, rows ~460 tokens (an estimate: the prompt and box answer are short).
        Reference(101, "ms-swift grounding.sh, Qwen2-VL-7B r8 all-linear, 1 image 644x476, bs1×460, ckpt",
                  "ms-swift", QWEN2_VL_7B,
                  StepConfig(**bf16, lora_rank=8, lora_alpha=32, lora_dropout=0.05, gradient_checkpointing=True,
                             loss="full_logits", weight_decay=0.1),
                  StepShape(1, 460, images_per_row=1, image_grid=(1, 34, 46)), 20.0, "unstated",
                  "row length estimated from the data, not stated; nvidia-smi-like counter (context, cache) likely"),
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


# PEFT's MetaMathQA Llama-3.2-3B runs of one script, one data order (so the same batch lengths) and one
# commit (51c2ff666, method_comparison/MetaMathQA/results/lora--llama-3.2-3B-*.json): training-step p99
# reserved bytes. Rows 17 and 19 and two more configurations whose per-token costs differ.
PEFT_SAME_RUN: tuple[tuple[str, dict, int], ...] = (
    ("r32 q,v", dict(lora_rank=32, lora_alpha=64, lora_targets=QV), 20120076288),
    ("r32 q,v DoRA", dict(lora_rank=32, lora_alpha=64, lora_targets=QV, use_dora=True), 22179479552),
    ("r64 q,v", dict(lora_rank=64, lora_alpha=128, lora_targets=QV), 20369637376),
    ("r10 gate,up,down", dict(lora_rank=10, lora_alpha=20, lora_targets=("gate_proj", "up_proj", "down_proj")),
     22064136192),
)


def same_run_lengths(lengths: list[int], exact: bool) -> list[str]:
    """The four PEFT configurations simulated at 4 × L, each against its own training-step figure. A diagnosis,
    not a comparison (L is chosen, not published): if the per-step terms are right, one L matches all four,
    whose per-token costs differ; a wrong term would leave no such L."""
    lines = [f"{'4 × L':>7}  " + "  ".join(f"{name:>22}" for name, _, _ in PEFT_SAME_RUN)]
    for length in lengths:
        cells = []
        for _, fields, measured in PEFT_SAME_RUN:
            c = StepConfig(dtype="bfloat16", loss="full_logits", autocast=False, weight_decay=0.1, **fields)
            got = simulate(LLAMA_3_2_3B, c, StepShape(4, length), exact=exact).reserved_gib
            cells.append(f"{got:6.2f} vs {measured / GIB:5.2f} {error_pct(got, measured / GIB):+5.1f}%")
        lines.append(f"{length:>7}  " + "  ".join(f"{cell:>22}" for cell in cells))
    return lines


def error_pct(predicted: float, measured: float) -> float:
    return round(100 * (predicted - measured) / measured, 1)


@dataclass(frozen=True)
class Compared:
    """One row's simulated figure against the source's published one (and its training-step one, if any)."""

    row: int
    label: str
    stack: str
    counter: str
    published_gib: float
    training_step_gib: float | None
    predicted_gib: float
    allocated_gib: float
    reserved_gib: float
    error_pct: float  # against the published figure
    training_step_error_pct: float | None
    compared_error_pct: float  # what the medians use: the training-step error where there is one
    differs: str
    seconds: float


def compare(ref: Reference, exact: bool = True) -> Compared:
    t0 = time.perf_counter()
    sim = simulate(ref.model, ref.config, ref.shape, exact=exact)
    predicted = round(sim.reserved_gib if ref.counter == "reserved" else sim.allocated_gib, 2)
    step = ref.training_step_gib
    return Compared(ref.row, ref.label, ref.stack, ref.counter, ref.published_gib, step, predicted,
                    round(sim.allocated_gib, 2), round(sim.reserved_gib, 2), error_pct(predicted, ref.published_gib),
                    None if step is None else error_pct(predicted, step), error_pct(predicted, ref.compared_gib),
                    ref.differs, round(time.perf_counter() - t0, 1))


STACKS = (("hf", "same stack (transformers + PEFT)"), ("other", "other stacks (torchtune, LitGPT)"))
VLM_STACKS = ("ms-swift",)  # vision-language rows: printed apart from the text medians


def medians(rows: list[Compared]) -> list[str]:
    """Median |error| per stack, on the figures compared (training-step where recorded), and on the published
    figures alone."""
    lines = []
    vlm = [r for r in rows if r.stack in VLM_STACKS]  # apart: a row length estimated, not published
    rows = [r for r in rows if r.stack not in VLM_STACKS]
    for stack, name in STACKS:
        mine = [r for r in rows if (r.stack == "hf") == (stack == "hf")]
        if not mine:
            continue
        used = statistics.median(abs(r.compared_error_pct) for r in mine)
        published = statistics.median(abs(r.error_pct) for r in mine)
        note = "" if used == published else f" (against the published figures alone: {published:.1f} %)"
        lines.append(f"median |error|, {name}: {used:.1f} % over {len(mine)} rows{note}")
    lines += [f"vision-language row {r.row} (not in the medians): {r.error_pct:+.1f} % against the published "
              f"{r.published_gib} GiB; simulated reserved {r.reserved_gib} GiB + {CUDA_CONTEXT_GIB} GiB CUDA context"
              for r in vlm]
    return lines


def markdown(rows: list[Compared]) -> str:
    """The table in docs/benchmarks.md (README links it), from this run's figures."""
    out = ["| row | source | published GiB (counter) | simulated GiB | error | training-step GiB | error |",
           "|---|---|---|---|---|---|---|"]
    def signed(pct: float | None) -> str:
        return "—" if pct is None else f"{pct:+.1f} %".replace("-", "−")

    for r in rows:
        step = "—" if r.training_step_gib is None else f"{r.training_step_gib:.2f}"
        out.append(f"| {r.row} | {r.label} | {r.published_gib} ({r.counter}) | {r.predicted_gib:.2f} | "
                   f"{signed(r.error_pct)} | {step} | {signed(r.training_step_error_pct)} |")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="also write the rows as JSON here")
    parser.add_argument("--markdown", action="store_true", help="also print the table of docs/benchmarks.md")
    parser.add_argument("--lengths", type=int, nargs="*", default=[], metavar="L",
                        help="also simulate PEFT's four MetaMathQA configurations at 4 × L (a diagnosis of rows 17/19)")
    parser.add_argument("--extrapolated", action="store_true", help="simulate 2 and 4 layers and extrapolate, as "
                        "the planner does (default: every layer)")
    parser.add_argument("--smoke", action="store_true", help=f"rows {SMOKE_ROWS} only, extrapolated, with --markdown")
    args = parser.parse_args()
    if args.smoke:
        args.extrapolated = args.markdown = True
    rows = []
    print(f"{'row':>4} {'stack':9} {'counter':9} {'published':>9} {'simulated':>9} {'error':>7} "
          f"{'train-step':>10} {'error':>7}  configuration")
    for ref in references():
        if args.smoke and ref.row not in SMOKE_ROWS:
            continue
        r = compare(ref, exact=not args.extrapolated)
        rows.append(r)
        step = (f"{r.training_step_gib:>10.2f} {r.training_step_error_pct:>+6.1f}%" if r.training_step_gib is not None
                else f"{'-':>10} {'-':>7}")
        print(f"{r.row:>4} {r.stack:9} {r.counter:9} {r.published_gib:>9.2f} {r.predicted_gib:>9.2f} "
              f"{r.error_pct:>+6.1f}% {step}  {r.label} ({r.seconds} s)", flush=True)
    print("\n".join(medians(rows)))
    print("(the medians use the training-step figure where the source records one: rows "
          f"{', '.join(str(r.row) for r in rows if r.training_step_gib is not None)})")
    print("\nwhat differs per row:")
    for r in rows:
        print(f"  {r.row}: {r.differs}")
    print("\nnot expressible:")
    for key, why in NOT_EXPRESSIBLE.items():
        print(f"  {key}: {why}")
    if args.lengths:
        print("\nPEFT MetaMathQA, Llama-3.2-3B, simulated reserved GiB at 4 × L vs each run's training-step p99:")
        print("\n".join(same_run_lengths(args.lengths, exact=not args.extrapolated)))
    if args.markdown:
        print("\n" + markdown(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([asdict(r) for r in rows], fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
