"""The evaluation comparison: the demo sweep's targets (4 adapters + 2 bases) evaluated by `tunelab eval` (one
pass per base), by lm-eval one CLI process per target (as its CLI is used), by lm-eval's Python API in one
process (each base loaded once, adapters swapped), and by inspect-ai's own hf/ provider (one process per target);
repeats interleaved, the tool order rotated. Every tool gets the same prompts (tunelab's, checked token for token
by the lm-eval helper's task), greedy decoding, the same stop and token limit; each one's answers are compared
with tunelab's sample by sample."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from peerlib import inspect_hf, lmeval
from peerlib.measure import run_measured, thread_env
from peerlib.registry import env_python
from peerlib.tunelab_answers import Target, agreement, eval_job, sweep_targets, tunelab_accuracy, tunelab_answers

BATCH = 16  # every tool's batch (tunelab's eval batch for the demo is chosen by itself: recorded in scores.json)
MODES = ("tunelab", "lm-eval CLI", "lm-eval API", "inspect hf/")


@dataclass
class EvalResult:
    mode: str
    repeat: int
    wall_s: float | None = None
    processes: int = 0
    samples: int = 0
    agreement: float | None = None  # the lowest share of identical answers over the targets
    accuracy: dict[str, float | None] = field(default_factory=dict)
    load_before: str = ""
    load_after: str = ""
    error: str | None = None


def demo_experiment(out: Path, python: Path, threads: int) -> Path:
    """The tiny demo sweep, trained and evaluated once (not timed): its experiment directory."""
    exp = out / "demo" / "experiment"
    if not any(exp.glob("runs/*/eval/*/*/scores.json")):
        print("[peers] the demo sweep (trained once for the evaluation comparison, not timed)", flush=True)
        done = subprocess.run([str(python), "-m", "tunelab", "demo", "--out", str(out / "demo")],
                              env=thread_env(threads), capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"tunelab demo failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return exp


def _commands(mode: str, exp: Path, targets: list[Target], work: Path, tasks: Path) -> list[list[str]]:
    lm_python = env_python(lmeval.ENV)
    if mode == "tunelab":
        return [[sys.executable, "-m", "tunelab", "eval", str(exp), "--force"]]
    if mode == "lm-eval CLI":
        return lmeval.commands(targets, tasks / "lm", work, lm_python, BATCH)
    if mode == "lm-eval API":
        return [lmeval.api_command(targets, tasks / "lm", work, lm_python, BATCH)]
    return inspect_hf.commands(targets, tasks / "inspect", work, Path(sys.executable), BATCH)


def run_mode(mode: str, exp: Path, targets: list[Target], work: Path, tasks: Path, threads: int,
             repeat: int, ours: dict[str, dict[int, str]]) -> EvalResult:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    row = EvalResult(mode, repeat)
    total = 0.0
    commands = _commands(mode, exp, targets, work, tasks)
    for i, command in enumerate(commands):
        measured = run_measured(command, thread_env(threads), work, work / f"output{i}.log")
        row.load_before = row.load_before or measured.load_before
        row.load_after = measured.load_after
        total += measured.wall_s
        if measured.returncode:
            row.error = f"exit {measured.returncode}: {measured.tail(3)}"
            return row
    row.wall_s, row.processes = total, len(commands)
    task = eval_job(targets[0].run_dir).task
    if mode == "tunelab":
        theirs, row.accuracy = tunelab_answers(targets, task), tunelab_accuracy(targets, task)
    else:
        parser = inspect_hf if mode == "inspect hf/" else lmeval
        theirs, row.accuracy = parser.parse_answers(work), parser.parse_accuracy(work)
    shares = agreement(ours, theirs)
    row.samples = sum(len(a) for a in theirs.values())
    row.agreement = min(shares.values()) if shares else None
    return row


def available(modes: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """The modes that can run, and one line for each that cannot."""
    ok, why = [], []
    for mode in modes:
        if mode.startswith("lm-eval") and not (env_python(lmeval.ENV).parent.parent / ".tunelab-peer-env").exists():
            why.append(f"evaluation: {mode} could not run: no environment: run scripts/peer-env {lmeval.ENV}")
        else:
            ok.append(mode)
    return ok, why


def compare(out: Path, threads: int, repeats: int, modes: tuple[str, ...] = MODES) -> tuple[list[EvalResult],
                                                                                           list[str]]:
    exp = demo_experiment(out, Path(sys.executable), threads)
    targets = sweep_targets(exp)
    job = eval_job(targets[0].run_dir)
    tasks = out / "eval-tasks"
    lmeval.write_task(tasks / "lm", job, sorted({t.base for t in targets}))
    inspect_hf.write_task(tasks / "inspect", job)
    ours = tunelab_answers(targets, job.task)
    runnable, lines = available(modes)
    rows: list[EvalResult] = []
    for repeat in range(repeats):
        for mode in runnable[repeat % len(runnable):] + runnable[:repeat % len(runnable)]:
            print(f"[peers] evaluation repeat {repeat + 1}/{repeats}: {mode}", flush=True)
            row = run_mode(mode, exp, targets, out / "eval" / mode.replace(" ", "-").strip("/") / str(repeat),
                           tasks, threads, repeat, ours)
            rows.append(row)
            print(f"  {describe(row)}", flush=True)
    return rows, lines


def describe(row: EvalResult) -> str:
    if row.error:
        return f"{row.mode}: failed: {row.error}"
    return (f"{row.mode}: wall {row.wall_s:.1f} s in {row.processes} process(es), {row.samples} samples, "
            f"answers identical to tunelab's: {row.agreement:.1%} (worst target), load {row.load_before} -> "
            f"{row.load_after}")
