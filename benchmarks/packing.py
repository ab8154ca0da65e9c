"""Non-pad token fraction: tunelab's packing (best-fit decreasing, TRL's) vs greedy sequential
packing (torchtune's way: fill a pack in order, pad it when the next example does not fit) vs
no packing (dynamic padding at the recommended micro-batch); on the capitalization set and on a
long-tailed length distribution. Then the measured packed ÷ unpacked throughput of one real tiny
run each.

    python benchmarks/packing.py [--out DIR] [--no-train] [--smoke]

--smoke: the same on 40 words (32 training rows) and 500 long-tailed lengths, each tiny run 1 epoch logged every
step, its job forked from this process (forking.py: the imports paid once, not per job): seconds of work, for
tests/e2e/test_benchmark_smoke.py.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
from pathlib import Path

from forking import run_job

MAX_SEQ_LEN = 256
WORDS, SMOKE_WORDS = 1000, 40


def greedy_sequential_fill(lengths: list[int], max_seq_len: int) -> tuple[int, float]:
    """(packs, fill) of in-order packing with no splitting: each pack padded to max_seq_len."""
    packs, current = 0, 0
    for n in lengths:
        n = min(n, max_seq_len)
        if current and current + n > max_seq_len:
            packs += 1
            current = 0
        current += n
    packs += 1 if current else 0
    return packs, sum(min(n, max_seq_len) for n in lengths) / (packs * max_seq_len)


def compare(name: str, lengths: list[int], micro_batch: int) -> None:
    from tunelab.estimate.dataset import simulate_bfd_packing, simulate_padding

    bfd = simulate_bfd_packing(lengths, MAX_SEQ_LEN)
    g_packs, g_fill = greedy_sequential_fill(lengths, MAX_SEQ_LEN)
    pad = simulate_padding(lengths, micro_batch, MAX_SEQ_LEN, seed=0)
    mean_len = sum(lengths) / len(lengths)
    print(f"\n{name}: {len(lengths)} examples, mean {mean_len:.1f} tokens, max {max(lengths)}, max_seq_len {MAX_SEQ_LEN}")
    print(f"  {'method':44} {'rows':>6} {'row fill':>9} {'non-pad share of processed tokens':>34}")
    print(f"  {'tunelab BFD packing (padding-free)':44} {bfd.sequences:6d} {bfd.fill_fraction:9.3f} {1.0:34.3f}")
    print(f"  {'greedy sequential packing (padded packs)':44} {g_packs:6d} {g_fill:9.3f} {g_fill:34.3f}")
    label = f"no packing, dynamic padding, micro-batch {micro_batch}"
    print(f"  {label:44} {pad.batches:6d} {'—':>9} {pad.nonpad_fraction:34.3f}")
    print("  (row fill: real tokens ÷ rows × max_seq_len. Padding-free BFD feeds only real tokens, so what it "
          "processes is all non-pad; padded packs and padded batches process their padding.)")

def long_tailed(n: int, seed: int = 0) -> list[int]:
    """Log-normal lengths (median ≈ 60 tokens, a long tail), seeded."""
    rng = random.Random(seed)
    return [max(8, min(MAX_SEQ_LEN, int(rng.lognormvariate(4.1, 0.9)))) for _ in range(n)]


def scaffolded(out: Path, smoke: bool) -> list:
    """The tiny packed and unpacked runs on the capitalization set, scaffolded (their run.yaml and job.sh)."""
    import yaml

    from tunelab.data.capitalization import make_capitalization_dataset
    from tunelab.models.tiny import build_tiny_model
    from tunelab.scaffold.write import scaffold

    data = make_capitalization_dataset(6, SMOKE_WORDS if smoke else WORDS, out / "data", 0.8, seed=0)
    model = out / "models" / "tiny-2x128"
    if not (model / "config.json").is_file():
        build_tiny_model(model, layers=2, hidden=128, seed=0)
    spec = {
        "name": "packing-bench",
        "models": [{"name": "tiny", "path": str(model)}],
        "datasets": [{"name": "caps", "path": str(data)}],
        "prompt": "Capitalize the word: {input}",
        "controls": False,
        "factors": {"packing": [False, True]},
        "naming": "packing_{packing}",
        "training": {"epochs": 1, "batch_size": 8, "max_seq_len": MAX_SEQ_LEN, "learning_rate": 0.002,
                     "modules_to_save": ["embed_tokens", "lm_head"], "logging_steps": 1 if smoke else 5},
    }
    path = out / "experiment" / "experiment.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec))
    return scaffold(path, force=True).runs


def measured_ratio(runs: list, smoke: bool) -> None:
    """Train the same tiny run packed and unpacked; compare throughput from their summaries. The smoke forks
    each job from this process, its imports done once (forking.py); the full benchmark runs job.sh."""
    summaries = {}
    for cfg in runs:
        run_job(cfg.run_dir, fork=smoke)
        summaries[cfg.training.packing] = json.loads((cfg.run_dir / "summary.json").read_text())
    p, u = summaries[True], summaries[False]
    print(f"\nmeasured, one real tiny run each (2×128, batch 8, {p['train_examples']} examples, 1 epoch):")
    for label, s in (("unpacked", u), ("packed", p)):
        print(f"  {label:9} steps {s['steps']:4d}  tokens/s {s['tokens_per_s']:9.0f}  non-pad tokens/s "
              f"{s['nonpad_tokens_per_s']:9.0f}  train time {s['train_time_s']:.1f} s")
    print(f"  packed ÷ unpacked tokens/s: {p['tokens_per_s'] / u['tokens_per_s']:.2f}; "
          f"non-pad tokens/s: {p['nonpad_tokens_per_s'] / u['nonpad_tokens_per_s']:.2f}; "
          f"optimizer steps: {p['steps']} vs {u['steps']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--no-train", action="store_true", help="Only the packing simulations.")
    ap.add_argument("--smoke", action="store_true", help=f"{SMOKE_WORDS} words, 500 long-tailed lengths (seconds)")
    args = ap.parse_args()
    out = (args.out or Path(tempfile.mkdtemp(prefix="tunelab-packing-"))).resolve()
    os.environ.setdefault("TUNELAB_HISTORY", str(out / "history.db"))
    os.environ["HF_HUB_OFFLINE"] = "1"

    from tunelab.plan.planner import measure_lengths

    runs = scaffolded(out, args.smoke)
    caps = measure_lengths(runs[0]).train  # the training split's token lengths, as training encodes them
    compare("capitalization (6-letter words, chat format)", caps, micro_batch=8)
    compare("long-tailed (log-normal lengths)", long_tailed(500 if args.smoke else 5000), micro_batch=8)
    if not args.no_train:
        measured_ratio(runs, args.smoke)


if __name__ == "__main__":
    main()
