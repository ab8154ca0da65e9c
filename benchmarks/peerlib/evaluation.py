"""The evaluation comparison, per model (`--models`: the tiny demo and the SmolLM2 demo): each demo sweep's targets
(tiny: 4 adapters + 2 bases; SmolLM2: 2 adapters + 1 base) evaluated by `tunelab eval` (one pass per base), by
lm-eval one CLI process per target (as its CLI is used), by lm-eval's Python API in one process (each base loaded
once, adapters swapped), and by inspect-ai's own hf/ provider (one process per target); repeats interleaved, the
tool order rotated. Every tool gets the same prompts (tunelab's: the model's chat template and generation prompt),
greedy decoding, the same stop and token limit; after each peer run its prompts are checked token for token against
the prompt ids tunelab's own log recorded (lm-eval: the contexts it logged, tokenized by its rule; inspect hf/: its
provider's own rendering code on the same messages), and its answers are compared with tunelab's sample by
sample."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from peerlib import inspect_hf, lmeval
from peerlib.isolation import fresh_home
from peerlib.measure import run_measured, thread_env
from peerlib.registry import env_python
from peerlib.tunelab_answers import (
    EvalJob,
    Target,
    agreement,
    eval_job,
    sweep_targets,
    tunelab_accuracy,
    tunelab_answers,
    tunelab_prompts,
    tunelab_stops,
)

BATCH = 16  # lm-eval's batch (tunelab's eval batch is chosen by itself: scores.json; inspect hf/: best_batch)
MODES = ("tunelab", "lm-eval CLI", "lm-eval API", "inspect hf/")


@dataclass
class EvalResult:
    model: str  # the demo: tiny | smollm2
    mode: str
    repeat: int
    wall_s: float | None = None
    processes: int = 0
    samples: int = 0
    agreement: float | None = None  # the lowest share of identical answers over the targets
    prompts_identical: float | None = None  # the lowest share of samples whose prompt tokens equal tunelab's
    accuracy: dict[str, float | None] = field(default_factory=dict)
    load_before: str = ""
    load_after: str = ""
    error: str | None = None


@dataclass(frozen=True)
class Sweep:
    """One model's demo sweep, what every route evaluates, and tunelab's own answers and prompt ids to check."""

    model: str
    experiment: Path
    targets: list[Target]
    job: EvalJob
    tasks: Path
    answers: dict[str, dict[int, str]]
    prompts: dict[str, dict[int, list[int]]]


def demo_dir(out: Path, model: str) -> Path:
    """Where the demo of this model is made: OUT/demo (tiny, as before) or OUT/demo-MODEL."""
    return out / ("demo" if model == "tiny" else f"demo-{model}")


SWEEP = "sweep"  # not a demo: the whole-sweep benchmark's tunelab experiment (long-tailed rows, sweep_tunelab.py)


def sweep_experiment(out: Path, python: Path, threads: int) -> Path:
    """The whole-sweep benchmark's experiment (SmolLM2 × rank {8, 32} × two rates and the base, long-tailed rows,
    at its default sizes) made by tunelab's own pipeline once, not timed: its evaluation is the one compared."""
    from peerlib import sweep_data, sweep_tunelab
    from peerlib.sweep_spec import SweepSpec
    from tunelab.models.smollm2 import build_smollm2

    where = demo_dir(out, SWEEP)
    exp = where / "experiment"
    if any(exp.glob("runs/*/eval/*/*/scores.json")):
        return exp
    print("[peers] the whole sweep's tunelab experiment (trained once for the evaluation comparison, not timed)",
          flush=True)
    sweep = SweepSpec(threads=threads)
    model_dir = where / "models" / "smollm2"
    build_smollm2(model_dir, dtype="float32")
    inputs = sweep_data.write(where / "data", model_dir, sweep_data.SweepData(), sweep.max_seq_len)
    mean = sweep_data.mean_tokens(sweep_data.lengths(inputs), sweep.max_seq_len)
    for phase in sweep_tunelab.phases(inputs, sweep, where, python, mean)[:3]:  # scaffold, run, eval
        done = subprocess.run(phase.argv(), env=thread_env(threads), capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{' '.join(phase.argv()[2:4])} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return exp


def demo_experiment(out: Path, python: Path, threads: int, model: str = "tiny") -> Path:
    """The model's demo sweep, trained and evaluated once (not timed): its experiment directory."""
    if model == SWEEP:
        return sweep_experiment(out, python, threads)
    where = demo_dir(out, model)
    exp = where / "experiment"
    if not any(exp.glob("runs/*/eval/*/*/scores.json")):
        print(f"[peers] the {model} demo sweep (trained once for the evaluation comparison, not timed)", flush=True)
        done = subprocess.run([str(python), "-m", "tunelab", "demo", "--model", model, "--out", str(where)],
                              env=thread_env(threads), capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"tunelab demo --model {model} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return exp


def prepare_sweep(out: Path, model: str, threads: int) -> Sweep:
    """The model's demo (made once), the peers' task files (the stop rule checked), and tunelab's answers and
    prompt ids from its logs."""
    exp = demo_experiment(out, Path(sys.executable), threads, model)
    targets = sweep_targets(exp)
    job = eval_job(targets[0].run_dir)
    tasks = out / "eval-tasks" / model
    lmeval.write_task(tasks / "lm", job, sorted({t.base for t in targets}))
    inspect_hf.write_task(tasks / "inspect", job)
    for t in {t.base: t for t in targets}.values():  # one target per base
        inspect_hf.check_stops(t.base, tunelab_stops(t))
    return Sweep(model, exp, targets, job, tasks, tunelab_answers(targets, job.task),
                 {t.name: tunelab_prompts(t, job.task) for t in targets})


def _commands(mode: str, sweep: Sweep, work: Path) -> list[list[str]]:
    lm_python = env_python(lmeval.ENV)
    if mode == "tunelab":
        return [[sys.executable, "-m", "tunelab", "eval", str(sweep.experiment), "--force"]]
    if mode == "lm-eval CLI":
        return lmeval.commands(sweep.targets, sweep.tasks / "lm", work, lm_python, BATCH)
    if mode == "lm-eval API":
        return [lmeval.api_command(sweep.targets, sweep.tasks / "lm", work, lm_python, BATCH)]
    # its best setting, not BATCH: every sample of a target in one batch (inspect_hf.py: its polling and batch wait)
    return inspect_hf.commands(sweep.targets, sweep.tasks / "inspect", work, Path(sys.executable),
                               inspect_hf.best_batch(sweep.job))


def _their_prompts(mode: str, sweep: Sweep, work: Path) -> dict[str, dict[int, list[int]]]:
    """The prompt ids the route gave the model, per target: what tunelab's are checked against."""
    if mode == "tunelab":
        return {t.name: tunelab_prompts(t, sweep.job.task) for t in sweep.targets}
    if mode.startswith("lm-eval"):
        return lmeval.prompt_ids(work, {t.name: t.base for t in sweep.targets})
    per_base = {base: inspect_hf.prompt_ids(sweep.job, base) for base in {t.base for t in sweep.targets}}
    return {t.name: per_base[t.base] for t in sweep.targets}


def run_mode(mode: str, sweep: Sweep, work: Path, threads: int, repeat: int) -> EvalResult:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    row = EvalResult(sweep.model, mode, repeat)
    total = 0.0
    commands = _commands(mode, sweep, work)
    for i, command in enumerate(commands):  # each process with cold caches and history (peerlib/isolation.py)
        measured = run_measured(command, thread_env(threads, fresh_home(work / f"home{i}")), work,
                                work / f"output{i}.log")
        row.load_before = row.load_before or measured.load_before
        row.load_after = measured.load_after
        total += measured.wall_s
        if measured.returncode:
            row.error = f"exit {measured.returncode}: {measured.tail(3)}"
            return row
    row.wall_s, row.processes = total, len(commands)
    if mode == "tunelab":
        theirs = tunelab_answers(sweep.targets, sweep.job.task)
        row.accuracy = tunelab_accuracy(sweep.targets, sweep.job.task)
    else:
        parser = inspect_hf if mode == "inspect hf/" else lmeval
        theirs, row.accuracy = parser.parse_answers(work), parser.parse_accuracy(work)
    shares = agreement(sweep.answers, theirs)
    prompt_shares = agreement(sweep.prompts, _their_prompts(mode, sweep, work))
    row.samples = sum(len(a) for a in theirs.values())
    row.agreement = min(shares.values()) if shares else None
    row.prompts_identical = min(prompt_shares.values()) if prompt_shares else None
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


def compare(out: Path, models: list[str], threads: int, repeats: int,
            modes: tuple[str, ...] = MODES) -> tuple[list[EvalResult], list[str]]:
    """Every runnable route on each model's demo sweep, `repeats` times interleaved (the route order rotated)."""
    runnable, lines = available(modes)
    rows: list[EvalResult] = []
    for model in models:
        sweep = prepare_sweep(out, model, threads)
        for repeat in range(repeats):
            for mode in runnable[repeat % len(runnable):] + runnable[:repeat % len(runnable)]:
                print(f"[peers] evaluation ({model}) repeat {repeat + 1}/{repeats}: {mode}", flush=True)
                work = out / "eval" / model / mode.replace(" ", "-").strip("/") / str(repeat)
                row = run_mode(mode, sweep, work, threads, repeat)
                rows.append(row)
                print(f"  {describe(row)}", flush=True)
    return rows, lines


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def describe(row: EvalResult) -> str:
    if row.error:
        return f"{row.model} {row.mode}: failed: {row.error}"
    return (f"{row.model} {row.mode}: wall {row.wall_s:.1f} s in {row.processes} process(es), {row.samples} samples, "
            f"answers identical to tunelab's: {_share(row.agreement)}, prompt tokens identical: "
            f"{_share(row.prompts_identical)} (worst target), load {row.load_before} -> {row.load_after}")
