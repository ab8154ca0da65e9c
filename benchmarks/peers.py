"""tunelab beside the tools a lab would use instead, measured in one run (issue 52).

    python benchmarks/peers.py [--out DIR] [--models tiny,smollm2] [--tools tunelab,torchtune,llamafactory,
                               axolotl,oumi] [--repeats 3] [--threads N] [--parts sweep,training,evaluation,search]
                               [--warm-caches]     # the search on each tool's second run (default: all cold)
    python benchmarks/peers.py --smoke
    python benchmarks/peers.py --device cuda --parts training --tools tunelab,torchtune [--model-dir DIR]
                               [--peer-python torchtune=PYTHON]     # on a GPU: gpu_truth.py's peer row

Sweep (first): the whole sweep a lab runs, each tool's pipeline from the first command to the last score
(benchmarks/sweep_peers.py, at its default sizes; DIR/sweep/), its `sweep: tunelab ÷ PEER` lines leading the
output. The components follow.

Training: every tool trains the same LoRA job (peerlib/job.py: the demo's capitalization rows, the model's own chat
template, r16 on q_proj,v_proj, alpha 32, max_seq_len 64, micro-batch 8, 1 epoch, lr 2e-3 cosine, fp32, seed 0)
with the same thread count; repeats interleaved with the tool order rotated, every run of every tool with fresh
caches and history (peerlib/isolation.py: cold, as a first run); per run: wall time from the first command a user
types to the adapter (tunelab: `scaffold` then `train`), time to the first step's log line on that clock, steady
tokens/s counted one way for all (peerlib/result.py) and as the tool's own log says, the process tree's peak PSS
from outside (shared pages once; the summed RSS beside it), final loss, and the adapter's exact match on the test
rows by one scorer (peerlib/score.py, first repeat). Each peer runs from its own environment
(`scripts/peer-env NAME`); a peer without one, or that fails, is one line saying why.

Evaluation, per model of --models: that model's demo sweep (`tunelab demo --model M`, trained once, not timed: tiny
4 adapters + 2 bases, smollm2 2 adapters + 1 base) evaluated by `tunelab eval`, lm-eval (CLI per target, and its
Python API) and inspect-ai's hf/ provider (at its best batch: peerlib/inspect_hf.py), each route's prompt tokens and answers checked against tunelab's
(peerlib/evaluation.py).

Ends with one line per comparison, speed over speed (above 1: tunelab faster), and writes DIR/peers.json and the
Markdown table DIR/peers.md. Nothing else of ours may run beside it: the load is printed with every run.

--smoke: the committed whole-sweep run read again (benchmarks/results/, peerlib/sweep_smoke.py: its `sweep:` lines
first), tunelab's side only, on 160 words of the tiny model, and every peer's parser on the real output its
committed sample holds (peerlib/samples/NAME/, with the COMMAND that made it): a peer's output change breaks
its parser here, not the suite (tests/e2e/test_benchmark_smoke.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peerlib import evaluation, registry, samples, search, summary, sweep_bench, sweep_data, training  # noqa: E402
from peerlib.job import CPU_MODELS, GPU_JOB, GPU_MODELS, MODELS, Job, prepare  # noqa: E402
from peerlib.sweep_spec import SweepSpec  # noqa: E402

PARTS = ("sweep", "training", "evaluation", "search")


def run_sweep(args: argparse.Namespace, out: Path) -> tuple[str, list[str]]:
    """The whole sweep at sweep_peers.py's defaults, with this run's tools, repeats and threads."""
    return sweep_bench.run(out / "sweep", args.tools, args.repeats, sweep_data.SweepData(),
                           SweepSpec(threads=args.threads))


def run_training(args: argparse.Namespace, out: Path) -> tuple[list, dict[str, str], list[str]]:
    found = [registry.find(name, args.peer_python.get(name)) for name in args.tools]
    missing = [f"training: {f.name} could not run: {f.why}" for f in found if f.why]
    for line in missing:
        print(line, flush=True)
    job = replace(GPU_JOB if args.device == "cuda" else Job(), threads=args.threads)
    rows: list = []
    rows_file = out / "training_rows.jsonl"
    for model in args.models:
        inputs = prepare(out / "inputs", model, args.words, args.model_dir)
        # a random-init model answers nothing after one epoch: the GPU job is not scored
        rows += training.compare(found, inputs, job, out / "runs", args.repeats, rows_file,
                                 scored=not (job.cuda or args.no_score), fresh_caches=args.caches == "fresh")
    known = training.versions([f for f in found if f.peer and f.python])
    for f in found:
        if f.why:
            known.setdefault(f.name, "not installed")
    return rows, known, missing


def run_evaluation(args: argparse.Namespace, out: Path) -> tuple[list, list[str]]:
    rows, lines = evaluation.compare(out, args.models, args.threads, args.repeats, args.eval_modes)
    return rows, lines + summary.eval_lines(rows)


def run_search(args: argparse.Namespace, out: Path) -> tuple[list, list[str]]:
    inputs = prepare(out / "inputs", "tiny", search.SEARCH_WORDS)
    rows, lines = search.compare(inputs, Job(threads=args.threads), search.Search(), out, args.repeats,
                                 Path(sys.executable), tuple(args.tools), args.warm_caches)
    return rows, lines + summary.search_lines(rows, args.warm_caches)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--out", type=Path, default=None, help="work directory (default: a new temporary one)")
    ap.add_argument("--models", default=None,
                    help=f"models of the training and evaluation comparisons ({', '.join(CPU_MODELS)}, the default; "
                    f"evaluation: each model's own demo sweep, or `{evaluation.SWEEP}` (evaluation only): the whole "
                    f"sweep's tunelab experiment, long-tailed rows; --device cuda: {', '.join(GPU_MODELS)})")
    ap.add_argument("--tools", default=",".join(registry.TRAINERS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--eval-modes", default=",".join(evaluation.MODES), type=lambda v: tuple(v.split(",")),
                    help=f"the evaluation only: its routes ({', '.join(evaluation.MODES)}; default: all)")
    ap.add_argument("--warm-caches", action="store_true",
                    help="the search only: every side runs once untimed first and its timed repeats keep the caches "
                         "and history it left (each tool's second search on this machine; default: every repeat cold)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="OMP threads of every tool alike")
    ap.add_argument("--words", type=int, default=None, help="fewer rows than the demo's (default: the demo's)")
    ap.add_argument("--parts", default=",".join(PARTS),
                    help="which comparisons: sweep (every tool's whole pipeline, benchmarks/sweep_peers.py; over an "
                    "hour a repeat), training (every tool trains the job), evaluation (each model's demo "
                    "sweep's targets), search (the learning-rate search against oumi tune, its studies one after the "
                    "other and at once)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cuda: the GPU job (peerlib/job.py GPU_JOB: bf16, max_seq_len 512, passages) on "
                    f"{', '.join(GPU_MODELS)}, training only (benchmarks/gpu_truth.py's peer row runs it)")
    ap.add_argument("--model-dir", type=Path, default=None,
                    help="an existing directory of the (one) model in --models, instead of building it")
    ap.add_argument("--peer-python", action="append", default=[], metavar="NAME=PYTHON",
                    help="a peer's interpreter made another way than scripts/peer-env (repeatable)")
    ap.add_argument("--no-score", action="store_true",
                    help="training: no exact-match scoring of the adapters (the GPU job never scores)")
    ap.add_argument("--caches", choices=("fresh", "caller"), default="fresh",
                    help="training: fresh (every run of every tool with empty caches and history of its own: "
                    "peerlib/isolation.py), or caller (the caller's own, as they are: no fair figure, for smoke "
                    "checks that must not pay a cold start, e.g. gpu_truth.py --cpu-smoke's peer row)")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    default_models = GPU_MODELS if args.device == "cuda" else CPU_MODELS
    args.models, args.tools = (args.models or ",".join(default_models)).split(","), args.tools.split(",")
    if unknown := set(args.parts.split(",")) - set(PARTS):
        ap.error(f"--parts: unknown {', '.join(sorted(unknown))} (choose from {', '.join(PARTS)})")
    if unknown := set(args.eval_modes) - set(evaluation.MODES):
        ap.error(f"--eval-modes: unknown {', '.join(sorted(unknown))} (choose from {', '.join(evaluation.MODES)})")
    try:
        args.peer_python = registry.peer_pythons(args.peer_python)
    except ValueError as exc:
        ap.error(str(exc))
    if args.model_dir is not None and len(args.models) != 1:
        ap.error("--model-dir names the directory of one model: give one in --models")
    if args.device == "cuda" and (set(args.parts.split(",")) - {"training"}
                                  or set(args.models) - set(GPU_MODELS)):
        ap.error(f"--device cuda: training only, on {', '.join(GPU_MODELS)}")
    if evaluation.SWEEP in args.models and args.parts != "evaluation":
        ap.error(f"--models {evaluation.SWEEP}: the evaluation comparison only (--parts evaluation)")
    if unknown := [m for m in args.models if m not in (*MODELS, evaluation.SWEEP)]:
        ap.error(f"--models: unknown {', '.join(unknown)} (choose from {', '.join(MODELS)}, or {evaluation.SWEEP} "
                 "for the evaluation)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    out = (args.out or Path(tempfile.mkdtemp(prefix="tunelab-peers-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        return samples.smoke(out)
    print(f"[peers] {out}; {args.threads} threads each; cores {os.cpu_count()}", flush=True)
    record: dict = {"threads": args.threads, "cores": os.cpu_count()}
    lines: list[str] = []
    tables: list[str] = []
    if "sweep" in args.parts:  # first: what a lab compares leads (issue 66)
        table, sweep_lines = run_sweep(args, out)
        lines += sweep_lines
        tables.append(table)
        record["sweep"] = {"dir": str(out / "sweep"), "lines": sweep_lines}
    if "training" in args.parts:
        rows, versions, missing = run_training(args, out)
        lines += summary.ratio_lines(rows) + missing
        lines += [f"training ({m}): {tool} could not run: {why}" for (m, tool), why in summary.failures(rows).items()]
        tables.append(summary.table(rows, versions))
        record.update(versions=versions, training=[asdict(r) for r in rows])
    if "evaluation" in args.parts:
        eval_rows, eval_lines = run_evaluation(args, out)
        lines += eval_lines
        tables.append(summary.eval_table(eval_rows))
        record["evaluation"] = [asdict(r) for r in eval_rows]
    if "search" in args.parts:
        search_rows, search_lines = run_search(args, out)
        lines += search_lines
        tables.append(summary.search_table(search_rows, args.warm_caches))
        record["search"] = [asdict(r) for r in search_rows]
    record["lines"] = lines
    (out / "peers.md").write_text("\n\n".join(tables) + "\n")
    (out / "peers.json").write_text(json.dumps(record, indent=1))
    print("\n\n".join(tables))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
