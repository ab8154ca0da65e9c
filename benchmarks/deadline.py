"""Planning to a deadline, checked: the same small sweep planned two ways and both run for real on this CPU, each
run's and the sweep's predicted wall time beside the measured one, and measured before ÷ after.

The sweep: one tiny model, LoRA ranks (4, 16, 64 by default), the capitalization data, 1 epoch, evaluated with
exact_match on its test split (the last checkpoint). Planned two ways with the same `resources.deadline`:
- before: the lab's by-hand settings given explicitly (micro-batch 1 × gradient accumulation 16, gradient
  checkpointing on, a mid-epoch save every few steps; training.levers: off);
- auto: `training.levers: auto` with `training.effective_batch: 16` (the same effective batch).

Without a measurement a CPU plan predicts no training time at all, so `tunelab probe` (estimate/probe.py
`probe_runs`) measures both ways' run shapes first, into a fresh history (TUNELAB_HISTORY in --out); then both
are planned and scaffolded (the predictions are the plan's deadline verdict, forecast/deadline.py `DeadlinePlan`,
what `plan --json`'s `deadline` carries) before either trains, so neither plan reads the other's runs. Then
run after run, the two ways taking turns (a shared machine's load falls on both alike), each run's training
job through the local executor (`tunelab run EXP --run NAME`: `run_sweep`, job.sh a fresh process) and its
evaluation (`tunelab eval EXP --run NAME`, a fresh process), each timed. On one CPU the sweep runs one job at a
time, so its measured makespan is the sum of its runs' training and evaluation.

Printed: per run and per sweep, predicted and measured training (job start + training + saves), evaluation
(job start + load + generation) and their total, each prediction's error (predicted − measured) / measured of
the printed figures; measured before ÷ auto; where each prediction's parts came from beside what the runs
measured of them (summary.json's start-up, scores.json's evaluation time); the effective batch both ways and
the final losses side by side (their difference: one seed each, so a difference is an observation, not a
finding).

    python benchmarks/deadline.py [--out DIR] [--words 1000] [--ranks 4,16,64] [--deadline 2h] [--smoke]

--smoke: tiny-2x128, 60 words, ranks 4 and 16, 8 evaluation samples; the probes, jobs and evaluations forked
from this process after their imports (forking.py), for tests/e2e/test_benchmark_smoke.py: seconds of work, and
its errors say nothing (a forked job has no interpreter start to measure).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from forking import in_child, preload_training, run_job

WAYS = ("before", "auto")
BEFORE = {"batch_size": 1, "gradient_accumulation_steps": 16, "gradient_checkpointing": True, "levers": "off"}
AUTO = {"effective_batch": 16, "levers": "auto"}
MODELS = {"tiny-2x128": (2, 128, 0), "tiny-4x256": (4, 256, 1)}  # the demo's (tunelab.demo DEMO_MODELS)


def write_specs(out: Path, model: Path, data: Path, ranks: list[int], deadline: str, save_every: int,
                smoke: bool) -> dict[str, Path]:
    """Both ways' experiment.yaml: the same sweep, deadline and evaluation; only the training split differs."""
    paths = {}
    for way, training in (("before", {**BEFORE, "checkpoint_every": save_every}), ("auto", AUTO)):
        spec = {"name": f"deadline-{way}", "models": [{"name": model.name, "path": str(model)}],
                "datasets": [{"name": "caps", "path": str(data)}], "prompt": "Capitalize the word: {input}",
                "controls": False, "factors": {"lora_rank": ranks}, "naming": "r{lora_rank}",
                "training": {"epochs": 1, "learning_rate": 0.002, "max_seq_len": 64, "seed": 42,
                             "logging_steps": 1 if smoke else 5, "modules_to_save": ["embed_tokens", "lm_head"],
                             **training},
                "eval": {"task": "exact_match", "split": "test", "max_tokens": 12, "epochs": "last",
                         **({"limit": 8} if smoke else {})},
                # runs in turn: its sweep figures are its runs' sums, as its earlier results were measured
                "resources": {"deadline": deadline, "cpu_runs_at_once": 1}}
        paths[way] = out / way / "experiment.yaml"
        paths[way].parent.mkdir(parents=True, exist_ok=True)
        paths[way].write_text(yaml.safe_dump(spec, sort_keys=False))
    return paths


def probe(spec_path: Path, fork: bool) -> list[str]:
    """`tunelab probe`: each run shape of the plan (levers applied) measured and recorded in the history. The
    smoke runs probe_steps in a forked child instead of a fresh process (estimate/probe.py probe_shape)."""
    from tunelab.estimate.probe import probe_runs
    from tunelab.plan.planner import make_plan

    plan = make_plan(spec_path)
    if not fork:
        return [f"{r.run} b{r.batch_size}" for r in probe_runs(plan.finetune_runs, plan.spec_path)]
    import shutil

    from tunelab.estimate import probe as p
    from tunelab.ledger import history
    from tunelab.rundir.config import save_run_config
    from tunelab.rundir.layout import PROBE_RESULTS_FILE
    from tunelab.rundir.probe import read_probe_results

    done = []
    for shape in p.distinct_shapes(plan.finetune_runs):
        pcfg = p.probe_cfg(shape.cfg, shape.key)
        try:
            run_yaml = save_run_config(pcfg, durable=False)
            if in_child(_probe_steps, str(run_yaml)) != 0:
                raise SystemExit(f"probe of {shape.label()} failed")
            result = read_probe_results(pcfg.run_dir / PROBE_RESULTS_FILE)[shape.key]
        finally:
            shutil.rmtree(pcfg.run_dir, ignore_errors=True)
        row = p.to_history(shape, result, plan.spec_path)
        history.record([row])
        p.record_generation(shape, result, plan.spec_path)
        done.append(f"{row.run} b{row.batch_size}")
    return done


def _probe_steps(run_yaml: str) -> int:
    from tunelab.train.probe_steps import main

    return main([run_yaml])


def train(exp: Path, run: str, run_dir: Path, fork: bool) -> float:
    """Wall seconds of the run's training job: `tunelab run EXP --run RUN` (the local executor, job.sh a process
    of its own), or its job forked from this process (the smoke)."""
    t0 = time.perf_counter()
    if fork:
        run_job(run_dir, fork=True)
    else:
        from rich.console import Console

        from tunelab.execute.executors import executor_named
        from tunelab.execute.sweep import RowState, run_sweep

        state = run_sweep(executor_named("local"), exp, [run], console=Console(file=io.StringIO()))
        if state.get(run) != RowState.COMPLETED:
            raise SystemExit(f"{run} did not complete: {state}; see {run_dir / 'train.log'}")
    return time.perf_counter() - t0


def evaluate(exp: Path, run: str, fork: bool) -> float:
    """Wall seconds of the run's evaluation: `tunelab eval EXP --run RUN` in a process of its own, or
    evaluate_experiment in a child forked after the evaluation's imports (the smoke)."""
    t0 = time.perf_counter()
    if fork:
        in_child(_evaluate, str(exp), run)
    else:
        subprocess.run([sys.executable, "-m", "tunelab", "eval", str(exp), "--run", run], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    return time.perf_counter() - t0


def _evaluate(exp: str, run: str) -> int:
    from rich.console import Console

    from tunelab.evaluate.sweep import evaluate_experiment

    done = evaluate_experiment(exp, [run], console=Console(file=io.StringIO()))
    return len(done.get(run, []))


def measured_run(exp: Path, cfg: Any, fork: bool) -> dict[str, Any]:
    """One run trained and evaluated, timed; what its summary.json and scores.json say of it."""
    from tunelab.rundir.scores import read_scores

    train_s = train(exp, cfg.name, cfg.run_dir, fork)
    eval_s = evaluate(exp, cfg.name, fork)
    summary = json.loads((cfg.run_dir / "summary.json").read_text())
    scores = read_scores(cfg.run_dir)
    return {"train_s": train_s, "eval_s": eval_s, "startup_s": summary.get("startup_s"),
            "final_loss": summary.get("final_loss"), "effective_batch": summary.get("effective_batch_size"),
            "scored_s": sum(s.duration_s for s in scores), "accuracy": scores[-1].metrics if scores else None}


def predicted_run(line: Any) -> dict[str, float]:
    """The deadline verdict's parts of one run (forecast/deadline.py RunTimeline), in the table's three figures, and
    the total's P10–P90."""
    train = line.train_start_s + (line.train_s or 0.0) + line.saves_s
    ev = line.eval_start_s + (line.eval_s or 0.0)
    return {"train_s": train, "eval_s": ev, "total_s": line.total_s, "p10_s": line.total_p10_s or line.total_s,
            "p90_s": line.total_p90_s or line.total_s}


COVERED: list[bool] = []  # every total and makespan: measured inside its predicted P10–P90
WIDTHS: list[float] = []  # and its P90 / P10: a coverage means little without the width that bought it


def _inside(low: float, high: float, measured: float) -> str:
    COVERED.append(low <= measured <= high)
    if low > 0:
        WIDTHS.append(high / low)
    return f"{low:.1f}–{high:.1f} | {'yes' if COVERED[-1] else '**no**'}"


def _err(pred: float, meas: float) -> str:
    """(predicted − measured) / measured of the figures as printed (0.1 s)."""
    p, m = round(pred, 1), round(meas, 1)
    return f"{100 * (p - m) / m:+.1f} %" if m else "—"


def print_table(plans: dict[str, Any], measured: dict[str, dict[str, dict]]) -> dict[str, dict[str, float]]:
    """Each run's and each sweep's predicted vs measured seconds and errors; returns the sweeps' figures."""
    print("\n| way | run | split | predicted train s | measured train s | error | predicted eval s | measured eval s "
          "| error | predicted total s | measured total s | error | total P10–P90 s | measured inside |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    sweeps: dict[str, dict[str, float]] = {}
    colds: dict[str, tuple[float, float, float]] = {}  # way: its runs' predicted totals in turn, the makespan, measured
    for way in WAYS:
        plan, lines = plans[way], {r.run: r for r in plans[way].deadline.runs}
        pred_sum = {"train_s": 0.0, "eval_s": 0.0}
        meas_sum = {"train_s": 0.0, "eval_s": 0.0}
        for cfg in plan.runs:
            p, m, t = predicted_run(lines[cfg.name]), measured[way][cfg.name], cfg.training
            row = [(round(p[k], 1), round(m[k], 1)) for k in ("train_s", "eval_s")]
            row.append((round(p["total_s"], 1), row[0][1] + row[1][1]))
            split = f"{t.batch_size} × {t.gradient_accumulation_steps}{' ckpt' if t.gradient_checkpointing else ''}"
            print(f"| {way} | {cfg.name} | {split} | " + " | ".join(f"{a:.1f} | {b:.1f} | {_err(a, b)}" for a, b in row)
                  + f" | {_inside(p['p10_s'], p['p90_s'], row[2][1])} |")
            for k, (a, b) in zip(("train_s", "eval_s"), row):
                pred_sum[k] += a
                meas_sum[k] += b
        span = round(plan.deadline.makespan_s, 1)
        figures = [(pred_sum["train_s"], meas_sum["train_s"]), (pred_sum["eval_s"], meas_sum["eval_s"]),
                   (span, meas_sum["train_s"] + meas_sum["eval_s"])]
        d = plan.deadline
        print(f"| {way} | sweep (makespan) | | " + " | ".join(f"{a:.1f} | {b:.1f} | {_err(a, b)}" for a, b in figures)
              + f" | {_inside(d.makespan_p10_s or span, d.makespan_p90_s or span, figures[2][1])} |")
        sweeps[way] = {"train": figures[0][1], "eval": figures[1][1], "makespan": figures[2][1]}
        colds[way] = (round(sum(predicted_run(lines[c.name])["total_s"] for c in plan.runs), 1), span, figures[2][1])
    for way, (cold, span, measured_span) in colds.items():  # the plan prices a sweep's later local jobs warm
        print(f"{way}: the plan's makespan prices {cold - span:.1f} s of warm job starts (one `tunelab run` for the "
              f"sweep: a later job forked from its warm process); here each run is its own command, so none starts "
              f"warm: its runs in turn {cold:.1f} s against {measured_span:.1f} measured, {_err(cold, measured_span)}")
    ratios = {k: round(sweeps["before"][k], 1) / round(sweeps["auto"][k], 1) for k in ("train", "eval", "makespan")}
    print(f"\nmeasured before ÷ auto: training {ratios['train']:.2f}, evaluation {ratios['eval']:.2f}, "
          f"makespan {ratios['makespan']:.2f}")
    print(f"interval coverage: {sum(COVERED)} of {len(COVERED)} measured totals and makespans inside their predicted "
          f"P10–P90 ({100 * sum(COVERED) / max(1, len(COVERED)):.0f} %; a calibrated 80 % interval covers about 80 %), "
          + (f"median width P90/P10 ×{statistics.median(WIDTHS):.2f} over {len(WIDTHS)} interval(s)" if WIDTHS
             else "no interval"))
    return sweeps


def print_parts(plans: dict[str, Any], measured: dict[str, dict[str, dict]]) -> None:
    """Where each sweep's prediction came from, part by part, beside what its runs measured of that part."""
    for way in WAYS:
        lines = plans[way].deadline.runs
        runs = [measured[way][r.run] for r in lines]
        parts = [
            ("training job start", sum(r.train_start_s for r in lines), sum(m["startup_s"] or 0.0 for m in runs),
             lines[0].train_start_source, "summary.json startup_s (process start to first step)"),
            ("training past the start + saves", sum((r.train_s or 0.0) + r.saves_s for r in lines),
             sum(m["train_s"] - (m["startup_s"] or 0.0) for m in runs),
             f"{lines[0].train_source}; saves: {lines[0].saves_source}", "job wall − start-up"),
            ("evaluation start + load", sum(r.eval_start_s for r in lines),
             sum(m["eval_s"] - m["scored_s"] for m in runs),
             lines[0].eval_start_source, "eval wall − scores.json duration_s"),
            ("evaluation on loaded weights", sum(r.eval_s or 0.0 for r in lines), sum(m["scored_s"] for m in runs),
             lines[0].eval_source, "scores.json duration_s (the first task's load included)"),
        ]
        print(f"\n{way}, the sweep's parts: predicted s, measured s, error — predicted from | measured as")
        for name, pred, meas, source, how in parts:
            print(f"  {name:<32} {pred:8.1f} {meas:8.1f} {_err(pred, meas):>9} — {source} | {how}")


def print_batches_and_losses(plans: dict[str, Any], measured: dict[str, dict[str, dict]]) -> None:
    for way in WAYS:
        t = [c.training for c in plans[way].runs]
        splits = sorted({(x.batch_size, x.gradient_accumulation_steps, x.gradient_checkpointing, x.checkpoint_every)
                         for x in t})
        summary = sorted({m["effective_batch"] for m in measured[way].values()})
        print(f"{way}: micro-batch × accumulation = effective batch "
              + ", ".join(f"{b} × {g} = {b * g} (checkpointing {'on' if c else 'off'}, checkpoint_every {e})"
                          for b, g, c, e in splits) + f"; summary.json effective_batch_size {summary}")
    print("final training loss (one seed each: a difference is an observation, not a finding):")
    for before, auto in zip(plans["before"].runs, plans["auto"].runs):
        lb, la = measured["before"][before.name]["final_loss"], measured["auto"][auto.name]["final_loss"]
        print(f"  {before.name}: before {lb:.4f}, auto {la:.4f}, auto − before {la - lb:+.4f}")


def print_plans(plans: dict[str, Any], probed: dict[str, list[str]], probe_s: float) -> None:
    shapes = "; ".join(f"{w}: {', '.join(s)}" for w, s in probed.items())
    print(f"probed first (tunelab probe, {probe_s:.1f} s): {shapes}")
    for way in WAYS:
        d = plans[way].deadline
        print(f"{way}: deadline {d.deadline}, verdict {d.verdict.value}, predicted makespan {d.makespan_s:.1f} s "
              f"(P10–P90 {d.makespan_p10_s:.1f}–{d.makespan_p90_s:.1f}) on {d.devices_source}")
    first = plans["auto"].runs[0].name
    for c in plans["auto"].levers.get(first, []):
        print(f"  auto lever {c.lever}: {c.value} ({c.source.value}) {c.effect}")


def build_inputs(out: Path, model_name: str, words: int) -> tuple[Path, Path]:
    from tunelab.data.capitalization import make_capitalization_dataset
    from tunelab.models.tiny import build_tiny_model

    layers, hidden, seed = MODELS[model_name]
    model = out / "models" / model_name
    if not (model / "config.json").is_file():
        build_tiny_model(model, layers=layers, hidden=hidden, seed=seed)
    return model, make_capitalization_dataset(5, words, out / "data", 0.8, 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--model", choices=sorted(MODELS), default="tiny-4x256")
    ap.add_argument("--words", type=int, default=1000, help="capitalization words (80 %% train)")
    ap.add_argument("--ranks", default="4,16,64")
    ap.add_argument("--deadline", default="2h")
    ap.add_argument("--save-every", type=int, default=10, help="before's checkpoint_every, optimizer steps")
    ap.add_argument("--smoke", action="store_true", help="tiny-2x128, 60 words, ranks 4 and 16 (seconds)")
    a = ap.parse_args()
    if a.smoke:
        a.model, a.words, a.ranks, a.save_every = "tiny-2x128", 60, "4,16", 2
    out = (a.out or Path(tempfile.mkdtemp(prefix="tunelab-deadline-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ["TUNELAB_HISTORY"] = str(out / "history.db")  # a fresh history: the probes only
    os.environ["HF_HUB_OFFLINE"] = "1"
    (out / "history.db").unlink(missing_ok=True)
    if a.smoke:
        preload_training()
    model, data = build_inputs(out, a.model, a.words)
    specs = write_specs(out, model, data, [int(r) for r in a.ranks.split(",")], a.deadline, a.save_every, a.smoke)
    t0 = time.perf_counter()
    probed = {way: probe(specs[way], a.smoke) for way in WAYS}
    probe_s = time.perf_counter() - t0
    from tunelab.scaffold.write import scaffold

    plans = {way: scaffold(specs[way], force=True) for way in WAYS}  # both predicted before either trains
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start; model {a.model}, "
          f"{a.words} words, ranks {a.ranks}; experiments in {out}")
    print_plans(plans, probed, probe_s)
    measured: dict[str, dict[str, dict]] = {way: {} for way in WAYS}
    for i in range(len(plans["before"].runs)):
        for way in (WAYS if i % 2 == 0 else WAYS[::-1]):  # turns: neither way always goes first
            cfg = plans[way].runs[i]
            measured[way][cfg.name] = measured_run(plans[way].experiment_dir, cfg, a.smoke)
    print_table(plans, measured)
    print_parts(plans, measured)
    print()
    print_batches_and_losses(plans, measured)
    print(f"load average at the end {os.getloadavg()[0]:.1f} (this machine is shared: other work moves wall times)")


if __name__ == "__main__":
    main()
