"""Fuzz everything tunelab reads from users with hypothesis: experiment.yaml (random YAML, mutated
structure, damaged bytes) with the design of its runs, run.yaml, dataset files (JSON split lists,
JSON/JSONL rows, CSV, Parquet; random rows and damaged files) through splits, row format and every
row, and torchtune/SLURM logs through `tunelab ingest` (cut off, damaged bytes, damaged numbers).

Every input must end accepted or in tunelab's own clear error (a log: skipped with its reason), never
another exception, and leave no half-written file or directory (temp files, empty dirs, cut JSON).
One line per target; the last line reads `bad inputs tried: M, tracebacks: T, half-written dirs: H`
(M: inputs rejected); exit 1 if T or H is not 0. The targets live in benchmarks/fuzz_targets.py;
tests/unit/test_fuzz.py runs them briefly in CI.

    python benchmarks/fuzz.py [--examples 1000] [--seed 0] [--target spec ...] [--smoke]

--smoke: 5 inputs per target (seconds), for tests/e2e/test_benchmark_smoke.py.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def distinct(tracebacks: list[str]) -> dict[str, str]:
    """One traceback per (target, exception, innermost frame)."""
    out: dict[str, str] = {}
    for tb in tracebacks:
        lines = tb.strip().splitlines()
        frames = [ln.strip() for ln in lines if ln.strip().startswith("File ")]
        out.setdefault(f"{tb.split(':')[0]}: {lines[-1].split(':')[0]} at {frames[-1] if frames else '?'}", tb)
    return out


def main(argv: list[str] | None = None) -> int:
    import fuzz_targets as ft

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=1000, help="Inputs per target.")
    ap.add_argument("--seed", type=int, default=0, help="hypothesis seed (recorded in the output).")
    ap.add_argument("--target", action="append", choices=list(ft.TARGETS), help="Only these targets.")
    ap.add_argument("--smoke", action="store_true", help="5 inputs per target (seconds)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.examples = 5
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cache = Path(tempfile.mkdtemp(prefix="tunelab-fuzz-cache-"))
    import datasets

    datasets.config.HF_DATASETS_CACHE = str(cache)  # thousands of damaged files: keep their caches apart
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # the parser's own complaint per bad file
    tally = ft.Tally()
    try:
        for name in args.target or list(ft.TARGETS):
            t0, bad_before = time.monotonic(), len(tally.tracebacks) + len(tally.half_written)
            ft.fuzz(name, args.examples, tally, strict=False, seed=args.seed)
            bad = len(tally.tracebacks) + len(tally.half_written) - bad_before
            print(f"{name:9} {tally.tried[name]:5d} inputs, {tally.rejected[name]:5d} rejected with a clear error, "
                  f"{tally.tried[name] - tally.rejected[name]:4d} accepted, {bad} bad outcome(s) "
                  f"({time.monotonic() - t0:.0f} s)", flush=True)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    for where, tb in distinct(tally.tracebacks).items():
        print(f"\n--- {where}\n{tb}")
    for item in tally.half_written[:10]:
        print(f"half-written: {item}")
    print(f"seed {args.seed}, {args.examples} examples per target")
    print(f"bad inputs tried: {sum(tally.rejected.values())}, tracebacks: {len(tally.tracebacks)}, "
          f"half-written dirs: {len(tally.half_written)}")
    return 1 if tally.tracebacks or tally.half_written else 0


if __name__ == "__main__":
    sys.exit(main())
