"""Two CPU runs side by side, before and after tunelab's thread rule (tunelab/host/threads.py): does tunelab still
oversubscribe the cores when it starts several training processes at once?

    python benchmarks/threads.py [--out DIR] [--layers 4 --hidden 256] [--words 600] [--repeats 3]
                                 [--scenarios one,ddp] [--smoke]

Each scenario trains two runs of a tiny model at the same time, each through tunelab's own job (`python -m
tunelab.train.job run.yaml`, scaffolded from a tiny spec with `resources.cpu_runs_at_once: 2`, as the local executor
would start them):

- `one`: two one-process runs;
- `ddp`: two 2-process DDP runs (each job launches its 2 ranks under torchrun): 4 training processes.

each way:

- before: what tunelab did until now, forced with TUNELAB_THREAD_RULE=torch: nothing set, torch's default threads
  in each process (all the cores), except that torchrun gives its ranks OMP_NUM_THREADS=1;
- after: tunelab's budget: the local executor gives each job its share of the cores (TUNELAB_CPUS, the job pins
  itself to it) and each of the job's processes runs share ÷ processes threads (at least one).

Per job: wall time, CPU time (the job and every process it waited for: os.wait4), steady tokens/s (its
summary.json) and the threads it recorded; per scenario the medians over --repeats (modes alternate: before,
after, after, before, ...) and the ratio before ÷ after. /proc/loadavg is printed before and after every pass: a
figure taken while other work held the cores is not a figure of this code (docs/benchmarks.md). An
OMP_NUM_THREADS of the calling shell is ignored for the jobs: it is what is measured.

--smoke: the ddp scenario only, a 2-layer 64-wide model on 160 words, one pass each way, job processes forked
after the imports (tests/e2e/test_benchmark_smoke.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import forking

SCENARIOS = {"one": ("2 x 1-process", 1), "ddp": ("2 x 2-process DDP", 2)}
MODES = ("before", "after")
CLEARED = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TUNELAB_OMP_NUM_THREADS", "TUNELAB_CPUS", "TUNELAB_THREAD_RULE",
           "TOKENIZERS_PARALLELISM")


@dataclass
class JobResult:
    run: str
    wall_s: float
    cpu_s: float
    tokens_per_s: float
    threads: dict


def loadavg() -> str:
    """The machine's load averages (1, 5, 15 min) and runnable/total tasks, as /proc/loadavg says."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:4])
    except OSError:
        return "unknown"


def scaffold_pair(out: Path, model: Path, data: Path, key: str, processes: int, smoke: bool) -> list:
    """The scenario's two runs (seeds 1 and 2: the same work), scaffolded afresh."""
    import yaml

    from tunelab.scaffold.write import scaffold

    resources = {"gpus_per_run": 0, "cpu_runs_at_once": 2, "nproc_per_run": processes,
                 **({"distributed": "ddp"} if processes > 1 else {})}
    spec = {"name": f"threads-{key}", "models": [{"name": "tiny", "path": str(model)}],
            "datasets": [{"name": "caps", "path": str(data)}], "prompt": "Capitalize the word: {input}",
            "controls": False, "factors": {"seed": [1, 2]},
            "training": {"epochs": 1, "batch_size": 8 // processes, "gradient_accumulation_steps": 1,
                         "max_seq_len": 64, "learning_rate": 0.002, "logging_steps": 1 if smoke else 5},
            "resources": resources}
    path = out / key / "experiment.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec))
    return scaffold(path, force=True).runs


def job_envs(runs: list, mode: str) -> list[dict[str, str]]:
    """Each job's environment: before, the old rule forced; after, the local executor's share of the cores."""
    from tunelab.execute.local_jobs import Devices

    base = {k: v for k, v in os.environ.items() if k not in CLEARED}
    base.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    if mode == "before":
        return [{**base, "TUNELAB_THREAD_RULE": "torch"} for _ in runs]
    devices = Devices(runs)
    return [{**base, **(devices.take(cfg, 0, i) or {})} for i, cfg in enumerate(runs)]


def _exec_job(run_dir: str, env: dict[str, str]) -> None:
    """A fresh job process, as job.sh starts it."""
    os.chdir(run_dir)
    os.execve(sys.executable, [sys.executable, "-m", "tunelab.train.job", "run.yaml"], env)


def _forked_job(run_dir: str, env: dict[str, str]) -> int:
    """The job in this forked process (its imports done by the parent): the smoke's way."""
    from tunelab.train.job import main

    os.chdir(run_dir)
    os.environ.clear()
    os.environ.update(env)
    return main(["run.yaml"])


def run_pass(runs: list, mode: str, fork: bool) -> list[JobResult]:
    """The two jobs started together; each one's wall time to its own end and the CPU time it and its
    processes used."""
    for cfg in runs:  # a fresh run each pass: no checkpoint to resume from
        for name in ("status.json", "metrics.jsonl", "summary.json", "packing.json"):
            (cfg.run_dir / name).unlink(missing_ok=True)
        for sub in ("trainer_state", "checkpoints"):
            shutil.rmtree(cfg.run_dir / sub, ignore_errors=True)
    envs = job_envs(runs, mode)
    target = _forked_job if fork else _exec_job
    start = time.monotonic()
    children = [forking.start(target, str(cfg.run_dir), env, out=cfg.run_dir / "train.log",
                              err=cfg.run_dir / "train.log") for cfg, env in zip(runs, envs)]
    ended: dict[int, float] = {}
    while len(ended) < len(children):
        for i, child in enumerate(children):
            if i not in ended and forking.poll(child):
                ended[i] = time.monotonic() - start
        time.sleep(0.05)
    results = []
    for i, (cfg, child) in enumerate(zip(runs, children)):
        if child.code != 0:
            raise SystemExit(f"{mode}: the job of {cfg.name} exited {child.code} (see {cfg.run_dir / 'train.log'})")
        summary = json.loads((cfg.run_dir / "summary.json").read_text())
        results.append(JobResult(cfg.name, ended[i], child.cpu_s, summary.get("tokens_per_s") or 0.0,
                                 summary.get("threads") or {}))
    return results


def threads_text(t: dict) -> str:
    torch = t.get("torch")
    return f"{torch if torch is not None else '?'} x {t.get('processes', '?')} on {t.get('cores_given', '?')} cores"


def run_scenario(out: Path, model: Path, data: Path, key: str, repeats: int, fork: bool) -> dict:
    """Every pass of one scenario, printed as it ends; the per-job medians of each mode."""
    name, processes = SCENARIOS[key]
    runs = scaffold_pair(out, model, data, key, processes, fork)
    order = [MODES[(i // 2 + i) % 2] for i in range(2 * repeats)]  # before, after, after, before, ...
    passes: dict[str, list[list[JobResult]]] = {m: [] for m in MODES}
    print(f"\n{name}: two runs side by side, {repeats} pass(es) each way")
    print(f"  {'pass':<9} {'job':<22} {'wall s':>7} {'CPU s':>7} {'tokens/s':>9}  threads (torch x processes)  "
          f"loadavg before | after")
    for mode in order:
        before = loadavg()
        results = run_pass(runs, mode, fork)
        after = loadavg()
        passes[mode].append(results)
        for r in results:
            print(f"  {mode:<9} {r.run:<22} {r.wall_s:7.2f} {r.cpu_s:7.2f} {r.tokens_per_s:9.1f}  "
                  f"{threads_text(r.threads):<27}  {before} | {after}")
    return {m: {stat: statistics.median(getattr(r, stat) for p in passes[m] for r in p)
                for stat in ("wall_s", "cpu_s", "tokens_per_s")} for m in MODES}


def print_ratios(medians: dict[str, dict]) -> None:
    print("\nmedians per job (both jobs, every pass), and before ÷ after:")
    print(f"  {'scenario':<20} {'':<8} {'wall s':>8} {'CPU s':>8} {'tokens/s':>9}")
    for key, m in medians.items():
        name = SCENARIOS[key][0]
        for mode in MODES:
            print(f"  {name:<20} {mode:<8} {m[mode]['wall_s']:8.2f} {m[mode]['cpu_s']:8.2f} "
                  f"{m[mode]['tokens_per_s']:9.1f}")
        ratio = {s: m["before"][s] / m["after"][s] if m["after"][s] else float("nan")
                 for s in ("wall_s", "cpu_s", "tokens_per_s")}
        print(f"  {name:<20} {'ratio':<8} {ratio['wall_s']:8.2f} {ratio['cpu_s']:8.2f} {ratio['tokens_per_s']:9.2f}")
    print("(ratio = before ÷ after: above 1 in wall and CPU time, below 1 in tokens/s, is the rule's gain)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--words", type=int, default=600, help="capitalization words (80 %% train)")
    ap.add_argument("--repeats", type=int, default=3, help="passes each way (modes alternate)")
    ap.add_argument("--scenarios", default="one,ddp", help="comma-separated: one, ddp")
    ap.add_argument("--smoke", action="store_true", help="ddp only, 2x64 model, 160 words, one pass each way")
    args = ap.parse_args()
    keys = [k for k in args.scenarios.split(",") if k]
    if args.smoke:
        args.layers, args.hidden, args.words, args.repeats, keys = 2, 64, 160, 1, ["ddp"]
    if not keys or set(keys) - set(SCENARIOS):
        ap.error(f"--scenarios: some of {', '.join(SCENARIOS)}")
    out = (args.out or Path(tempfile.mkdtemp(prefix="tunelab-threads-"))).resolve()
    os.environ.setdefault("TUNELAB_HISTORY", str(out / "history.db"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    from tunelab.data.capitalization import make_capitalization_dataset
    from tunelab.host.cores import usable_cpus
    from tunelab.models.tiny import build_tiny_model

    model = out / "models" / f"tiny-{args.layers}x{args.hidden}"
    if not (model / "config.json").is_file():
        build_tiny_model(model, layers=args.layers, hidden=args.hidden, seed=0)
    data = make_capitalization_dataset(6, args.words, out / "data", 0.8, seed=0)
    if args.smoke:
        forking.preload_training()
    print(f"machine: {os.cpu_count()} CPUs ({len(usable_cpus())} usable), loadavg {loadavg()} at the start; "
          f"tiny {args.layers}x{args.hidden}, {args.words} words; jobs {'forked' if args.smoke else 'fresh'}")
    medians = {key: run_scenario(out, model, data, key, args.repeats, args.smoke) for key in keys}
    print_ratios(medians)
    print(f"loadavg at the end: {loadavg()}; runs in {out}")


if __name__ == "__main__":
    main()
