"""Tool overhead on a large sweep: seconds that `plan` + `scaffold` take for a 1,000-run spec, and
`status` over it (targets: ≤ 2 s and ≤ 1 s). Timed in-process after imports (what the tool does),
and as whole CLI processes (what a user waits for, interpreter and imports included).

    python benchmarks/overhead.py [--out DIR] [--smoke]

--smoke: the same code paths on an 8-run spec (2 ranks × 2 rates × 2 seeds), timed in-process, plus one CLI
`status` process: seconds, for tests/e2e/test_benchmark_smoke.py (its figures say nothing about the targets). It
keeps the caller's $TUNELAB_CACHE where one is set (the test suite's, shared by its plans): the machine's loop-cost
measurement (a reference run in a fresh interpreter) and step timing that other plans kept are not taken again,
and its plan is timed as the full run's in-process plan is: after a first plan filled the cache.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

FACTORS = {"lora_rank": [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024],
           "learning_rate": [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1],
           "seed": list(range(10))}
SMOKE_FACTORS = {"lora_rank": [2, 4], "learning_rate": [1e-3, 2e-3], "seed": [0, 1]}


def write_specs(out: Path, smoke: bool) -> tuple[Path, Path]:
    """The large spec and a lab's everyday-size one (for the commands typed between jobs)."""
    from tunelab.data.capitalization import make_capitalization_dataset
    from tunelab.models.tiny import build_tiny_model

    model = build_tiny_model(out / "model", layers=2, hidden=128, seed=0)
    data = make_capitalization_dataset(5, 1000, out / "data", 0.8, seed=0)
    spec = {
        "name": "overhead",
        "models": [{"name": "tiny", "path": str(model)}],
        "datasets": [{"name": "caps", "path": str(data)}],
        "prompt": "Capitalize the word: {input}",
        "controls": True,
        "factors": SMOKE_FACTORS if smoke else FACTORS,
        "training": {"epochs": 1, "max_seq_len": 64},
    }
    path, small = out / "exp" / "experiment.yaml", out / "small" / "experiment.yaml"
    for p, body in ((path, spec), (small, {**spec, "name": "small", "factors": {"lora_rank": [4, 8], "seed": [0, 1]}})):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(yaml.safe_dump(body))
    return path, small


def cli(*argv: str) -> float:
    """Seconds of one whole `python -m tunelab ...` process."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tunelab", *argv], check=True, capture_output=True)
    return time.perf_counter() - t


def in_process(path: Path) -> tuple[int, int, int, float, float, float]:
    """(fine-tuned runs, controls, status rows, plan s, plan + scaffold s, status s), timed after imports."""
    from tunelab.execute.status import status_rows
    from tunelab.plan.planner import make_plan
    from tunelab.scaffold.write import scaffold

    make_plan(path, estimates=False)  # warm imports and caches that a CLI process pays at start
    t0 = time.perf_counter()
    plan = make_plan(path)
    t_plan = time.perf_counter() - t0
    t0 = time.perf_counter()
    scaffold(path)
    t_both = t_plan + (time.perf_counter() - t0)
    status_rows(path.parent)  # first call creates the ledger; time the steady case
    t0 = time.perf_counter()
    rows = status_rows(path.parent)
    t_status = time.perf_counter() - t0
    return len(plan.finetune_runs), len(plan.controls), len(rows), t_plan, t_both, t_status


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--smoke", action="store_true", help="8 runs, timed in-process, one CLI process (seconds)")
    args = ap.parse_args()
    out = (args.out or Path(tempfile.mkdtemp(prefix="tunelab-overhead-"))).resolve()
    os.environ["TUNELAB_HISTORY"] = str(out / "history.db")
    if not (args.smoke and os.environ.get("TUNELAB_CACHE")):  # the smoke keeps its caller's cache (the docstring)
        os.environ["TUNELAB_CACHE"] = str(out / "cache")  # empty: the first plan process is measured cold
    os.environ["HF_HUB_OFFLINE"] = "1"
    path, small = write_specs(out, args.smoke)
    if not args.smoke:
        c_cold = cli("plan", str(path))  # empty cache: tokenizer, datasets, inspect-ai, statsmodels, torch
        c_plan = cli("plan", str(path))  # the same inputs again: checks that passed are remembered (plan_cache.py)
        c_scaffold = cli("scaffold", str(path))
    n, controls, rows, t_plan, t_both, t_status = in_process(path)
    c_status = cli("status", str(path.parent))
    print(f"{n} fine-tuned runs + {controls} controls ({rows} status rows)")
    print(f"in-process:   plan {t_plan:.2f} s, plan + scaffold {t_both:.2f} s (target ≤ 2 s), status {t_status:.2f} s "
          "(target ≤ 1 s)")
    if args.smoke:
        print(f"CLI process, {rows} runs: status {c_status:.2f} s")
        return
    print(f"CLI process:  plan {c_cold:.2f} s cold (empty cache), plan {c_plan:.2f} s and scaffold {c_scaffold:.2f} s "
          "again on the same inputs (target ≤ 2 s; interpreter start and imports included)")
    c_results, c_cancel = cli("results", str(path.parent)), cli("cancel", str(path.parent))
    print(f"CLI process, {rows} runs: status {c_status:.2f} s, results {c_results:.2f} s, cancel {c_cancel:.2f} s")
    everyday(small)


def everyday(small: Path) -> None:
    """The commands typed between jobs on a 5-run experiment (target ≤ 0.5 s each as a process), beside the
    interpreter's own start."""
    from tunelab.scaffold.write import scaffold

    scaffold(small)
    cli("status", str(small.parent))  # creates its ledger
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    c_python = time.perf_counter() - t
    c_help = cli("--help")
    s_status, s_results, s_cancel = (cli(c, str(small.parent)) for c in ("status", "results", "cancel"))
    print(f"CLI process, 5 runs:     --help {c_help:.2f} s, status {s_status:.2f} s, results {s_results:.2f} s, "
          f"cancel {s_cancel:.2f} s (target ≤ 0.5 s each; `python -c pass` alone {c_python:.2f} s)")


if __name__ == "__main__":
    main()
