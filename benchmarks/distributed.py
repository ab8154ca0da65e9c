"""One process, DDP on 2 and FSDP on 2, side by side on this CPU: the same tiny-model run (same data, same
effective batch, same steps) through tunelab's own job three times, each rank's bytes read from its summary.json.

    python benchmarks/distributed.py [--out DIR] [--layers 4 --hidden 512] [--words 1200] [--reuse] [--smoke]

Per setup: each rank's frozen-parameter, trainable-parameter and optimizer-state bytes (the storage that process
holds: a shard's under FSDP, the whole model's under DDP), its peak RSS, and the steady step time (tokens per step
÷ the summary's tokens/s, past the first logging interval), then their ratios to one process. The two-process runs
take half the micro-batch, so every setup's optimizer step sees the same 16 examples.

What it says and what it does not: the byte columns are what FSDP exists for, and they are exact (the planner's
simulated shard is checked against them in tests/e2e/test_fsdp.py). The step times are gloo over loopback on a CPU
both processes share: they say nothing about NCCL, NVLink or InfiniBand, nor about a GPU's step time.

--smoke: a 2-layer, 64-wide model on 160 words (a few steps each), for tests/e2e/test_benchmark_smoke.py.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from forking import run_job

SETUPS = (("one process", {}), ("DDP x2", {"nproc_per_run": 2, "distributed": "ddp"}),
          ("FSDP x2", {"nproc_per_run": 2, "distributed": "fsdp"}))
MB = 2**20


def run_setups(out: Path, layers: int, hidden: int, words: int, smoke: bool) -> dict[str, dict]:
    """Each setup's run trained through its job, its summary.json."""
    import yaml

    from tunelab.data.capitalization import make_capitalization_dataset
    from tunelab.models.tiny import build_tiny_model
    from tunelab.scaffold.write import scaffold

    model = out / "models" / f"tiny-{layers}x{hidden}"
    if not (model / "config.json").is_file():
        build_tiny_model(model, layers=layers, hidden=hidden, seed=0)
    data = make_capitalization_dataset(6, words, out / "data", 0.8, seed=0)
    summaries = {}
    for name, resources in SETUPS:
        processes = resources.get("nproc_per_run", 1)
        spec = {"name": "distributed-bench", "models": [{"name": "tiny", "path": str(model)}],
                "datasets": [{"name": "caps", "path": str(data)}], "prompt": "Capitalize the word: {input}",
                "controls": False, "factors": {"lora_rank": [16]},
                "training": {"epochs": 1, "batch_size": 8 // processes, "gradient_accumulation_steps": 2,
                             "max_seq_len": 64, "learning_rate": 0.002, "logging_steps": 1 if smoke else 5},
                "resources": {"gpus_per_run": 0, **resources}}
        path = out / name.replace(" ", "_") / "experiment.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(spec))
        (cfg,) = scaffold(path, force=True).runs
        # a smoke forks the launcher of a 2-process run after the imports (its workers are fresh processes); a
        # one-process job trains in the process itself, and a forked one trains many times slower: always fresh
        run_job(cfg.run_dir, fork=smoke and processes > 1)
        summaries[name] = json.loads((cfg.run_dir / "summary.json").read_text())
    return summaries


def step_s(summary: dict) -> float:
    """Steady seconds per optimizer step: tokens per step ÷ the steady tokens/s (all processes together)."""
    return summary["tokens"] / summary["steps"] / summary["tokens_per_s"]


def print_table(summaries: dict[str, dict], layers: int, hidden: int, out: Path) -> None:
    first = summaries["one process"]
    print(f"device {first['device']}, {os.cpu_count()} CPUs, tiny {layers}x{hidden}, LoRA r16, "
          f"{first['steps']} steps of {first['effective_batch_size']} examples, {first['total_params']:,} parameters")
    print(f"  {'setup':<12} {'rank':>4} {'frozen MB':>10} {'trainable MB':>12} {'optimizer MB':>12} "
          f"{'peak RSS MB':>11} {'step s':>7}")
    for name, s in summaries.items():
        for p in s["processes"]:
            print(f"  {name:<12} {p['rank']:>4} {p['frozen_param_bytes'] / MB:10.3f} "
                  f"{p['trainable_param_bytes'] / MB:12.3f} {p['optimizer_bytes'] / MB:12.3f} "
                  f"{p['peak_rss_bytes'] / MB:11.1f} {step_s(s):7.3f}")
    print("ratios to one process (rank 0; step time of the whole run):")
    print(f"  {'setup':<12} {'frozen':>7} {'trainable':>9} {'optimizer':>9} {'peak RSS':>8} {'step time':>9}")
    base = first["processes"][0]
    for name, s in summaries.items():
        p = s["processes"][0]
        ratio = {k: p[k] / base[k] for k in ("frozen_param_bytes", "trainable_param_bytes", "optimizer_bytes",
                                               "peak_rss_bytes")}
        print(f"  {name:<12} {ratio['frozen_param_bytes']:7.3f} {ratio['trainable_param_bytes']:9.3f} "
              f"{ratio['optimizer_bytes']:9.3f} {ratio['peak_rss_bytes']:8.3f} {step_s(s) / step_s(first):9.3f}")
    losses = ", ".join(f"{n} {s['final_loss']:.4f}" for n, s in summaries.items())
    print(f"final losses: {losses}")
    print(f"(runs in {out}; CPU step times over gloo on one machine say nothing about GPU interconnects)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--words", type=int, default=1200, help="capitalization words (80 %% train)")
    ap.add_argument("--reuse", action="store_true", help="Only print the table of the runs already in --out.")
    ap.add_argument("--smoke", action="store_true", help="2x64 model, 160 words (seconds)")
    args = ap.parse_args()
    if args.smoke:
        args.layers, args.hidden, args.words = 2, 64, 160
    out = (args.out or Path(tempfile.mkdtemp(prefix="tunelab-distributed-"))).resolve()
    os.environ.setdefault("TUNELAB_HISTORY", str(out / "history.db"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    if args.reuse:
        summaries = {name: json.loads(next((out / name.replace(" ", "_")).glob("runs/*/summary.json")).read_text())
                     for name, _ in SETUPS}
    else:
        summaries = run_setups(out, args.layers, args.hidden, args.words, args.smoke)
    print_table(summaries, args.layers, args.hidden, out)


if __name__ == "__main__":
    main()
