"""Fair comparisons, measured: LoRA rank 4 against rank 64 on the demo's tiny model and the capitalization data,
compared at one default learning rate and at each rank's own tuned rate (tunelab's search, tune/search.py).

(a) A measured sweep of learning rates, every rate × both ranks trained for the whole run (each a real training
    job, forked from this process after its imports: forking.py), their final validation losses printed. The
    default rate is chosen from it: the rate where the two ranks' regrets (a rank's loss there less its best loss
    over the sweep) differ most — one that suits one rank and not the other.
(b) The rank comparison at that default against the comparison at each rank's tuned rate (`tunelab tune`'s
    search: a study per rank, seeded TPE, successive halving, every trial a real job on the local executor), the
    tuned runs trained for the whole run like the sweep's: whether the ranking changed.
(c) The search's wall time, and what the pruner saved: the same search with Optuna's NopPruner (every trial to its
    budget) in an experiment of its own, measured (--estimate-saving instead: the steps the pruned trials did not
    train × the completed trials' measured seconds per step — an estimate, and said so).
(d) The plan's price of the search (make_plan's `search`: forecast/tunecost.py, as successive halving is expected to
    spend it, and every trial to its budget) against the measured wall times.

    python benchmarks/tuning.py [--out DIR] [--words 600] [--trials 6] [--rates 1e-4,...] [--smoke]

--smoke: 120 words, 2 trials per rank, two rates, the saving estimated (no second search): seconds of training,
the trials' jobs each a fresh interpreter (the executor's), for tests/e2e/test_benchmark_smoke.py.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from forking import in_child, run_job

RANKS = (4, 64)
MODEL = ("tiny-2x128", 2, 128, 0)  # the demo's smallest (tunelab.demo DEMO_MODELS)
RATES = "1e-4,3e-4,1e-3,3e-3,1e-2,3e-2"


def build_inputs(out: Path, words: int) -> tuple[Path, Path]:
    from tunelab.data.capitalization import make_capitalization_dataset
    from tunelab.models.tiny import build_tiny_model

    name, layers, hidden, seed = MODEL
    model = out / "models" / name
    if not (model / "config.json").is_file():
        build_tiny_model(model, layers=layers, hidden=hidden, seed=seed)
    return model, make_capitalization_dataset(5, words, out / "data", 0.8, 0)


def write_spec(exp: Path, model: Path, data: Path, tune: dict | None) -> Path:
    """The rank comparison's spec (validated every 2 steps: the pruner's rungs, the runs' final loss)."""
    spec = {"name": "ranks", "models": [{"name": "tiny", "path": str(model)}],
            "datasets": [{"name": "caps", "path": str(data)}], "prompt": "Capitalize: {input}",
            "factors": {"lora_rank": list(RANKS)}, "controls": False,
            "training": {"epochs": 1, "learning_rate": 1e-3, "batch_size": 8, "max_seq_len": 64, "seed": 0,
                         "modules_to_save": ["embed_tokens", "lm_head"], "logging_steps": 1,
                         "validation_every_steps": 2},
            "eval": {"max_tokens": 8}}
    if tune is not None:
        spec["tune"] = tune
    exp.mkdir(parents=True, exist_ok=True)
    (exp / "experiment.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return exp / "experiment.yaml"


def final_val_loss(run_dir: Path) -> float:
    """The run's last validation loss, read from its own metrics.jsonl."""
    from tunelab.rundir import read_metrics

    rows = [r.val_loss for r in read_metrics(run_dir) if r.is_validation and r.val_loss is not None]
    return rows[-1] if rows else math.nan


def train_at(cfg: Any, rate: float, run_dir: Path) -> float:
    """The run trained for its whole length at `rate` (a forked job), its final validation loss."""
    from tunelab.rundir.config import save_run_config
    from tunelab.scaffold.write import write_job_script

    training = cfg.training.model_copy(update={"learning_rate": rate})
    run = cfg.model_copy(update={"training": type(training).model_validate(training.model_dump()),
                                 "directory": str(run_dir), "name": run_dir.name, "estimate": None})
    save_run_config(run)
    write_job_script(run, sys.executable)
    run_job(run_dir, fork=True)
    return final_val_loss(run_dir)


def rate_sweep(spec: Path, rates: list[float], out: Path) -> dict[int, dict[float, float]]:
    """(a): every rate × rank trained whole; {rank: {rate: final val loss}}."""
    from tunelab.plan.planner import make_plan

    runs = {cfg.factors["lora_rank"]: cfg for cfg in make_plan(spec, estimates=False).finetune_runs
            if cfg.default_lr_of is None}  # a default-lr twin shares its run's factors
    return {rank: {rate: train_at(runs[rank], rate, out / f"r{rank}-lr{rate:g}") for rate in rates}
            for rank in RANKS}


def choose_default(losses: dict[int, dict[float, float]]) -> tuple[float, str]:
    """The rate where the ranks' regrets differ most, and why in words."""
    best = {r: min(v for v in losses[r].values() if math.isfinite(v)) for r in RANKS}

    def regret(rank: int, rate: float) -> float:
        v = losses[rank][rate]
        return v - best[rank] if math.isfinite(v) else math.inf

    rates = sorted(losses[RANKS[0]])
    gap = {rate: abs(regret(RANKS[0], rate) - regret(RANKS[1], rate)) for rate in rates}
    rate = max(rates, key=lambda x: (gap[x], -x))
    suits = min(RANKS, key=lambda r: regret(r, rate))
    other = max(RANKS, key=lambda r: regret(r, rate))
    return rate, (f"at {rate:g} rank {suits} is {regret(suits, rate):.3f} above its best loss and rank {other} "
                  f"{regret(other, rate):.3f} above its own: the largest gap of the sweep ({gap[rate]:.3f})")


def trial_dirs(exp: Path) -> list[Path]:
    return sorted((exp / "tune").glob("*/trial-*"))


def search(spec: Path, prune: bool) -> dict[str, Any]:
    """(b, c): tunelab's search, timed; what its trials trained, read from their own directories."""
    from tunelab.rundir import read_metrics, read_status
    from tunelab.rundir.metrics import seconds_per_step
    from tunelab.rundir.tuned import read_pruned
    from tunelab.tune.search import search as run_search

    t0 = time.perf_counter()
    best = run_search(spec, prune=prune, on_trial=lambda d: print(
        f"  {'pruned' if prune else 'unpruned'} search: {d.combination} trial {d.number} lr {d.learning_rate:.3g} "
        f"{d.outcome.state.name.lower()} at step {d.outcome.step}", flush=True))
    wall = time.perf_counter() - t0
    dirs = trial_dirs(spec.parent)
    steps = [read_status(d).step or 0 for d in dirs]
    budget = max(int(yaml.safe_load((d / "run.yaml").read_text())["training"]["max_steps"]) for d in dirs)
    paces = [p for d in dirs if read_pruned(d) is None and (p := seconds_per_step(read_metrics(d)))]
    return {"wall_s": wall, "trials": len(dirs), "pruned": sum(read_pruned(d) is not None for d in dirs),
            "steps": sum(steps), "budget_steps": budget * len(dirs),
            "best": {name: rate.learning_rate for name, rate in best.items()},
            "pace_s": sorted(paces)[len(paces) // 2] if paces else None}


def predicted(spec: Path) -> dict[str, float]:
    """(d): the plan's price of the search, before it ran."""
    from tunelab.plan.planner import make_plan

    costs = make_plan(spec).search
    lo = sum(c.time_range.p10_s if c.time_range else (c.seconds or 0.0) for c in costs)
    hi = sum(c.time_range.p90_s if c.time_range else (c.seconds or 0.0) for c in costs)
    return {"p50": sum(c.seconds or 0.0 for c in costs), "p10": lo, "p90": hi,
            "unpruned": sum(c.unpruned_s or 0.0 for c in costs), "share": costs[0].spent_share if costs else 1.0}


def tuned_losses(spec: Path, out: Path) -> dict[int, tuple[float, float]]:
    """(b): each rank trained whole at its tuned rate (the plan reads tune/best.json); {rank: (rate, loss)}."""
    from tunelab.plan.planner import make_plan

    runs = {cfg.factors["lora_rank"]: cfg for cfg in make_plan(spec, estimates=False).finetune_runs
            if cfg.default_lr_of is None}  # a default-lr twin shares its run's factors
    return {r: (runs[r].training.learning_rate, train_at(runs[r], runs[r].training.learning_rate,
                                                         out / f"tuned-r{r}")) for r in RANKS}


def winner(losses: dict[int, float]) -> int:
    return min(RANKS, key=lambda r: losses[r])


def print_sweep(losses: dict[int, dict[float, float]], default: float, why: str) -> None:
    print("\n### (a) Learning-rate sweep (final validation loss, whole run)\n")
    print("| Learning rate | " + " | ".join(f"rank {r}" for r in RANKS) + " |")
    print("|---|" + "---|" * len(RANKS))
    for rate in sorted(losses[RANKS[0]]):
        print(f"| {rate:g} | " + " | ".join(f"{losses[r][rate]:.4f}" for r in RANKS) + " |")
    print(f"\nDefault learning rate chosen: {default:g} — {why}.")


def print_comparison(at_default: dict[int, float], default: float, tuned: dict[int, tuple[float, float]]) -> None:
    print("\n### (b) Rank comparison: one default rate against each rank's tuned rate\n")
    print("| Comparison | " + " | ".join(f"rank {r}: lr, val loss" for r in RANKS) + " | Better |")
    print("|---|" + "---|" * (len(RANKS) + 1))
    print("| default lr | " + " | ".join(f"{default:g}, {at_default[r]:.4f}" for r in RANKS)
          + f" | rank {winner(at_default)} |")
    at_tuned = {r: tuned[r][1] for r in RANKS}
    print("| tuned lr | " + " | ".join(f"{tuned[r][0]:.3g}, {tuned[r][1]:.4f}" for r in RANKS)
          + f" | rank {winner(at_tuned)} |")
    changed = winner(at_default) != winner(at_tuned)
    print(f"\nRanking changed: {'yes' if changed else 'no'} (rank {winner(at_default)} at the default, rank "
          f"{winner(at_tuned)} at the tuned rates).")


def print_search(pruned: dict, unpruned: dict | None, plan: dict[str, float]) -> None:
    print("\n### (c, d) The search: measured against the plan's price\n")
    print("| Search | Trials | Pruned | Steps trained / budget | Wall time (s) | Plan's price (s, P10–P90) |")
    print("|---|---|---|---|---|---|")
    print(f"| successive halving | {pruned['trials']} | {pruned['pruned']} | {pruned['steps']} / "
          f"{pruned['budget_steps']} | {pruned['wall_s']:.1f} | {plan['p50']:.1f} ({plan['p10']:.1f}–"
          f"{plan['p90']:.1f}) |")
    if unpruned is not None:
        print(f"| no pruner (NopPruner) | {unpruned['trials']} | {unpruned['pruned']} | {unpruned['steps']} / "
              f"{unpruned['budget_steps']} | {unpruned['wall_s']:.1f} | {plan['unpruned']:.1f} |")
        saved = unpruned["wall_s"] - pruned["wall_s"]
        print(f"\nPruner saved (measured): {saved:.1f} s of {unpruned['wall_s']:.1f} s "
              f"({saved / unpruned['wall_s']:.0%}); the plan expected {plan['unpruned'] - plan['p50']:.1f} s "
              f"(share of the budgets trained: {plan['share']:.0%} predicted, "
              f"{pruned['steps'] / pruned['budget_steps']:.0%} measured).")
    else:
        untrained = pruned["budget_steps"] - pruned["steps"]
        pace = pruned["pace_s"] or 0.0
        print(f"\nPruner saved (estimate: steps not trained × measured step time): {untrained} steps × "
              f"{pace:.3f} s = {untrained * pace:.1f} s; the plan expected {plan['unpruned'] - plan['p50']:.1f} s "
              f"(share of the budgets trained: {plan['share']:.0%} predicted, "
              f"{pruned['steps'] / pruned['budget_steps']:.0%} measured).")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--words", type=int, default=600, help="capitalization words (80 %% train)")
    ap.add_argument("--trials", type=int, default=6, help="trials per rank")
    ap.add_argument("--budget", type=float, default=0.25)
    ap.add_argument("--rates", default=RATES)
    ap.add_argument("--estimate-saving", action="store_true", help="no second search: the saving estimated")
    ap.add_argument("--smoke", action="store_true", help="120 words, 2 trials, 2 rates, the saving estimated")
    a = ap.parse_args()
    if a.smoke:
        a.words, a.trials, a.budget, a.rates, a.estimate_saving = 120, 2, 0.5, "1e-3,3e-2", True
    out = (a.out or Path(tempfile.mkdtemp(prefix="tunelab-tuning-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ["TUNELAB_HISTORY"] = str(out / "history.db")  # a fresh history
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    t0 = time.perf_counter()
    model, data = build_inputs(out, a.words)
    # compare_default off: the benchmark trains each rank at the default rate itself, (a) and (b)
    tune = {"learning_rate": {"low": 1e-4, "high": 3e-2, "log": True}, "per": ["lora_rank"], "trials": a.trials,
            "budget": a.budget, "compare_default": False}
    rates = [float(x) for x in a.rates.split(",")]
    losses = rate_sweep(write_spec(out / "sweep", model, data, None), rates, out / "sweep" / "runs")
    default, why = choose_default(losses)
    spec = write_spec(out / "tuned", model, data, tune)
    # the plan and the searches time and train with torch in this process: each in a child of its own, so that
    # the training jobs forked after them start from a process without torch's threads (a fork keeps their locks)
    plan = in_child(predicted, spec)
    pruned = in_child(search, spec, True)
    unpruned = None if a.estimate_saving else in_child(search, write_spec(out / "unpruned", model, data, tune), False)
    tuned = tuned_losses(spec, out / "tuned" / "whole")
    print_sweep(losses, default, why)
    print_comparison({r: losses[r][default] for r in RANKS}, default, tuned)
    print_search(pruned, unpruned, plan)
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; total "
          f"{time.perf_counter() - t0:.0f} s; out: {out}")


if __name__ == "__main__":
    main()
