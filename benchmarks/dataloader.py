"""Step time and time waiting for data vs dataloader workers (0, 1, 2) on this machine: the same real
tiny run three times through its job script, numbers read from each run's summary.json.

    python benchmarks/dataloader.py [--out DIR] [--workers 0 1 2] [--model-layers 2 --hidden 128] [--reuse] [--smoke]

Step time is the steady one (tokens per step ÷ the summary's tokens/s, past the first logging interval);
the wait share is the summary's data_wait_fraction (data wait ÷ the run's whole training time).

--smoke: one run, 1 dataloader worker, on 40 words (32 training rows: 4 steps, logged each step), its job forked
from this process (forking.py: a fresh training process mostly imports, about 10 s CPU), for
tests/e2e/test_benchmark_smoke.py.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from forking import run_job

WORDS, SMOKE_WORDS = 1000, 40


def run_sweep(out: Path, workers: list[int], layers: int, hidden: int, smoke: bool = False) -> dict[int, dict]:
    import yaml

    from tunelab.data.capitalization import make_capitalization_dataset
    from tunelab.models.tiny import build_tiny_model
    from tunelab.scaffold.write import scaffold

    model = out / "models" / f"tiny-{layers}x{hidden}"
    if not (model / "config.json").is_file():
        build_tiny_model(model, layers=layers, hidden=hidden, seed=0)
    data = make_capitalization_dataset(6, SMOKE_WORDS if smoke else WORDS, out / "data", 0.8, seed=0)
    spec = {
        "name": "dataloader-bench",
        "models": [{"name": "tiny", "path": str(model)}],
        "datasets": [{"name": "caps", "path": str(data)}],
        "prompt": "Capitalize the word: {input}",
        "controls": False,
        "factors": {"dataloader_workers": workers},
        "naming": "workers_{dataloader_workers}",
        "training": {"epochs": 1, "batch_size": 8, "max_seq_len": 64, "learning_rate": 0.002,
                     "modules_to_save": ["embed_tokens", "lm_head"], "logging_steps": 1 if smoke else 10},
    }
    path = out / "experiment" / "experiment.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec))
    summaries = {}
    for cfg in scaffold(path, force=True).runs:
        run_job(cfg.run_dir, fork=smoke)
        summaries[cfg.training.dataloader_workers] = json.loads((cfg.run_dir / "summary.json").read_text())
    return summaries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--model-layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--reuse", action="store_true", help="Only print the table of the runs already in --out.")
    ap.add_argument("--smoke", action="store_true", help=f"one run, 1 worker, {SMOKE_WORDS} words (seconds)")
    args = ap.parse_args()
    out = (args.out or Path(tempfile.mkdtemp(prefix="tunelab-dataloader-"))).resolve()
    os.environ.setdefault("TUNELAB_HISTORY", str(out / "history.db"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    if args.reuse:
        found = [json.loads(p.read_text()) for p in sorted((out / "experiment" / "runs").glob("*/summary.json"))]
        summaries = {s["dataloader_workers"]: s for s in found}
    else:
        summaries = run_sweep(out, [1] if args.smoke else args.workers, args.model_layers, args.hidden, args.smoke)
    print_table(summaries, args.model_layers, args.hidden, out)


def print_table(summaries: dict[int, dict], layers: int, hidden: int, out: Path) -> None:
    first = next(iter(summaries.values()))
    print(f"device {first['device']}, {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), "
          f"tiny {layers}x{hidden}, batch 8, {first['steps']} steps, 1 epoch")
    print(f"  {'workers':>7} {'step ms':>8} {'wait/step ms':>12} {'wait share':>10} {'data wait s':>11} "
          f"{'train time s':>12} {'tokens/s':>9}")
    for w, s in sorted(summaries.items()):
        steps = s["steps"]
        step_ms = 1000 * s["tokens"] / steps / s["tokens_per_s"]
        print(f"  {w:7d} {step_ms:8.1f} {1000 * s['data_wait_s'] / steps:12.2f} {s['data_wait_fraction']:10.2%} "
              f"{s['data_wait_s']:11.3f} {s['train_time_s']:12.1f} {s['tokens_per_s']:9.0f}")
    print(f"(runs in {out}; train time includes loading the model and data, evaluation and saves excluded)")


if __name__ == "__main__":
    main()
