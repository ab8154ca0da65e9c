"""A one-pass evaluation's generation on long-tailed prompts, and what a decode step costs against a prompt token.

    python benchmarks/eval_pass_ab.py [--rows 32] [--rounds 2] [--trees OLD/src NEW/src]   # A/B: the same work, each tree
    python benchmarks/eval_pass_ab.py --step-ratio                                           # batchcut.py's constant
    python benchmarks/eval_pass_ab.py --merge-ratio                                          # merging.py's gain
    python benchmarks/eval_pass_ab.py --smoke     # this tree against itself: 4 prompts, one round, one pass each, 1 thread

The A/B: SmolLM2-135M-Instruct (built from its wheel into --work) with two rank-32 adapters on every linear layer
(random B, seeded) and the base, each answering the same --rows test prompts of the whole-sweep benchmark's data
(peerlib/sweep_data.py: lognormal lengths, SmolLM2's chat template), 12 new tokens, greedy, batch 16, two threads (--threads),
as tunelab's own loop runs a wave (SharedWeights + MixedBatcher.generate_now). Each tree runs in a process of its own
(PYTHONPATH=TREE) timing two passes, the trees taking turns for --rounds; printed: each repeat's seconds, the batches cut, and whether every answer equals the
first tree's. --step-ratio: a prompt token's prefill (one 1 × 256 forward, the last position's logits, as generate()
prefills; the linear layers by the kernel evaluation picks here, TUNELAB_CPU_MATMUL to choose) and a decode step's fixed part (one row's
32 greedy steps after its prefill), medians of 5, and their ratio (batchcut.CPU_DECODE_STEP_TOKENS). --merge-ratio:
the first adapter answering the --rows prompts in batches of 16 rows, longest first, unmerged (PEFT's LoRA beside each
layer) and merged (merging.py), 3 times each, alternated; medians and whether the answers agree."""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def model_dirs(work: Path) -> tuple[Path, list[Path]]:
    """SmolLM2 from its wheel and two seeded rank-32 adapters (random B: an update that changes answers)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunelab.models.smollm2 import build_smollm2

    base = build_smollm2(work / "smollm2", dtype="float32").path
    adapters = [work / f"adapter{i}" for i in range(2)]
    for i, out in enumerate(adapters):
        if (out / "adapter_config.json").is_file():
            continue
        torch.manual_seed(i)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), LoraConfig(
            r=32, lora_alpha=64, target_modules="all-linear", task_type="CAUSAL_LM"))
        for name, param in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.02)
        model.save_pretrained(out)
    return base, adapters


def prompts(tok, rows: int) -> list[list[int]]:
    sys.path.insert(0, str(HERE))
    from peerlib.sweep_data import draw, messages, word_pool

    drawn, _ = draw(rows, random.Random(5), word_pool(), tok, 512)
    return [tok(tok.apply_chat_template(messages(r["input"], None), add_generation_prompt=True, tokenize=False),
                add_special_tokens=False)["input_ids"] for r in drawn]


def one_tree(work: Path, rows: int, repeats: int, threads: int) -> dict:
    """In this process (the tree on PYTHONPATH): the pass's generation, `repeats` times."""
    import torch

    import tunelab
    from tunelab.evaluate.mixbatch import RowKey
    from tunelab.evaluate.mixgen import BASE, Row
    from tunelab.evaluate.shared import SharedWeights

    torch.set_num_threads(threads)
    base, adapters = model_dirs(work)
    shared = SharedWeights(base, base, torch.float32, "cpu", resize=False)
    shared.serve_base()
    shared.attach(adapters)
    tok = shared.tokenizer
    end = tok.convert_tokens_to_ids("<|im_end|>")
    ids = prompts(tok, rows)
    todo = [Row(p, a, RowKey(12, None, None, (), a, (end,))) for a in [BASE, *shared.adapters()] for p in ids]
    seconds, answers, batches = [], [], 0
    for _ in range(repeats):
        batcher = shared.start_batching(16)
        t0 = time.perf_counter()
        answers = batcher.generate_now(todo)
        seconds.append(round(time.perf_counter() - t0, 2))
        batches = batcher.batches
    return {"tree": str(Path(tunelab.__file__).parents[1]), "seconds": seconds, "batches": batches,
            "answers": [a.new_ids for a in answers], "load": os.getloadavg()[0]}


def step_ratio(work: Path) -> dict:
    """A prompt token's prefill and a decode step's fixed part on this CPU (SmolLM2, float32, two threads)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    base, _ = model_dirs(work)
    from tunelab.models.cpu_linear import accelerate, kernel_of

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    accelerate(model)  # evaluation's linear kernel here (TUNELAB_CPU_MATMUL picks one)
    ids = torch.randint(100, 1000, (1, 256), generator=torch.Generator().manual_seed(0))
    prefill, steps = [], []
    with torch.inference_mode():
        for _ in range(6):
            t0 = time.perf_counter()
            model(input_ids=ids, logits_to_keep=1)  # as generate() prefills: the last position's logits
            t1 = time.perf_counter()
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=33, min_new_tokens=33,
                           do_sample=False, pad_token_id=0)
            t2 = time.perf_counter()
            prefill.append((t1 - t0) / ids.shape[1])
            steps.append(((t2 - t1) - (t1 - t0)) / 32)
    token, step = statistics.median(prefill[1:]), statistics.median(steps[1:])
    return {"prefill_s_per_token": token, "decode_step_s": step, "ratio": step / token, "load": os.getloadavg()[0],
            "linear": kernel_of(model).value}


def merge_ratio(work: Path, rows: int) -> dict:
    """The same batches answered by one adapter unmerged and merged, alternated (SmolLM2, float32, two threads)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.evaluate.merging import merge, unmerge

    torch.set_num_threads(2)
    base, adapters = model_dirs(work)
    tok = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                                      str(adapters[0]), adapter_name="a").eval()
    end = tok.convert_tokens_to_ids("<|im_end|>")
    ids = sorted(prompts(tok, rows), key=len, reverse=True)
    batches = [ids[i:i + 16] for i in range(0, len(ids), 16)]

    def answer() -> tuple[float, list]:
        t0, out = time.perf_counter(), []
        with torch.inference_mode():
            for batch in batches:
                width = max(map(len, batch))
                x = torch.tensor([[end] * (width - len(p)) + p for p in batch])
                mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
                got = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=12, do_sample=False,
                                     eos_token_id=[end], pad_token_id=end)
                out += got[:, width:].tolist()
        return time.perf_counter() - t0, out

    times: dict[str, list[float]] = {"unmerged": [], "merged": []}
    answers = {}
    for _ in range(3):
        seconds, answers["unmerged"] = answer()
        times["unmerged"].append(seconds)
        merged = merge(model, "a")
        seconds, answers["merged"] = answer()
        times["merged"].append(seconds)
        unmerge(model, merged)
    return {"seconds": times, "same": answers["unmerged"] == answers["merged"], "load": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/tunelab-eval-pass-ab"))
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help=argparse.SUPPRESS)  # passes a process times
    ap.add_argument("--trees", nargs="*", default=[])
    ap.add_argument("--step-ratio", action="store_true")
    ap.add_argument("--merge-ratio", action="store_true")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of each tree's process (default 2)")
    ap.add_argument("--smoke", action="store_true", help="this tree twice, 4 prompts, one round, one pass each, one "
                    "thread (the suite runs it beside other work: two threads would oversubscribe the cores)")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a tree's own process
    args = ap.parse_args()
    if args.smoke:
        args.rows, args.rounds, args.repeats, args.trees, args.threads = 4, 1, 1, [str(ROOT / "src")] * 2, 1
        # its scratch (SmolLM2's build and two adapters, ~600 MB) goes with it: the suite runs it on every CI
        with tempfile.TemporaryDirectory(prefix="eval-pass-ab-smoke-") as work:
            args.work = Path(work)
            return measure(args)
    return measure(args)


def measure(args: argparse.Namespace) -> None:
    """What main's arguments ask for, in args.work."""
    args.work.mkdir(parents=True, exist_ok=True)
    if args.one:
        print(json.dumps(one_tree(args.work, args.rows, args.repeats, args.threads)))
        return
    if args.step_ratio:
        got = step_ratio(args.work)
        print(f"prefill {got['prefill_s_per_token'] * 1e3:.2f} ms a prompt token, decode step "
              f"{got['decode_step_s'] * 1e3:.1f} ms: a step = {got['ratio']:.0f} prompt tokens (load {got['load']:.1f})")
        return
    if args.merge_ratio:
        got = merge_ratio(args.work, args.rows)
        med = {k: statistics.median(v) for k, v in got["seconds"].items()}
        print(f"unmerged {[round(x, 2) for x in got['seconds']['unmerged']]} s, merged "
              f"{[round(x, 2) for x in got['seconds']['merged']]} s: unmerged ÷ merged = "
              f"{med['unmerged'] / med['merged']:.2f}x (medians); answers the same: {got['same']} "
              f"(load {got['load']:.1f})")
        return
    trees = args.trees or [str(ROOT / "src")]
    runs: list[list[dict]] = [[] for _ in trees]
    for _ in range(args.rounds):
        for i, tree in enumerate(trees):
            env = {**os.environ, "PYTHONPATH": tree, "OMP_NUM_THREADS": str(args.threads)}
            out = subprocess.run([sys.executable, __file__, "--one", "--work", str(args.work), "--rows",
                                  str(args.rows), "--repeats", str(args.repeats), "--threads", str(args.threads)],
                                 env=env, capture_output=True,
                                 text=True, check=True)
            runs[i].append(json.loads(out.stdout.strip().splitlines()[-1]))
    first = runs[0][0]["answers"]
    medians = []
    for tree, mine in zip(trees, runs):
        seconds = [s for r in mine for s in r["seconds"]]
        same = min(sum(a == b for a, b in zip(r["answers"], first)) for r in mine)
        medians.append(statistics.median(seconds))
        print(f"{tree}: {seconds} s (median {medians[-1]:.2f}), {mine[-1]['batches']} batches, answers equal "
              f"to the first tree's: {same}/{len(first)}, load {[round(r['load'], 1) for r in mine]}")
    if len(trees) > 1:
        print(f"first ÷ last: {medians[0] / medians[-1]:.2f}x (medians)")


if __name__ == "__main__":
    main()
